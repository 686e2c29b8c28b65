"""The plugin contract: the hooks a phi-quant backend implements.

One plugin is one backend. The core calls each hook on one named backend (``export``,
``quantize``, ``load_model``) or on every backend (``detect_hardware`` for ``doctor``). All hooks
take keyword arguments only; a plugin may implement a subset of the parameters (pluggy passes
only the ones it names). Quick start for authors: ``docs/plugin-authoring.md``.

Streaming is part of the contract: ``export`` reads tensors one at a time from
``source.tensors()`` and writes each before reading the next; it never holds the whole model.
Atomic output is the core's job: ``export`` writes into ``output_dir``, a fresh temporary
directory that the core moves into place only when the hook returns without raising.

Architectures are part of the contract too (since 1.1). A backend lists the architectures it
writes in ``BackendInfo.architectures`` (``phi_quant.arch`` names, default ``("phi3",)``); the
core refuses a checkpoint of any other architecture before ``export`` is called. ``export``
sees ``source.config.arch`` (the architecture object; ``.name`` is one the backend declared),
and ``source.tensors()`` yields the tensors in that architecture's stream order,
``source.config.arch.stream_plan(source.config)``, each tagged with ``role``, ``layer`` and
``expert``; ``source.tensor_infos()`` gives the same list up front, without data. For ``phi3``
the order is: embed; per layer attn_norm, qkv, o, ffn_norm, gate_up, down; final_norm; lm_head
(absent when embeddings are tied). For ``phimoe``: embed; per layer attn_norm(+bias), q, k, v,
o (each with its bias), ffn_norm(+bias), router, then every expert's gate (w1), every up (w3),
every down (w2), each in expert order; final_norm(+bias), lm_head, lm_head_bias. Each module in
``phi_quant/arch/`` states its order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .model.source import ModelSource
    from .model.tensors import SourceTensor
    from .types import (
        BackendInfo,
        ExportOptions,
        ExportResult,
        HardwareReport,
        LoadedModel,
        PrecisionSpec,
        Progress,
        QuantizedTensor,
    )
    from .quant.plan import TensorPlan

__all__ = ["PROJECT_NAME", "hookspec", "hookimpl", "PhiQuantSpec"]

PROJECT_NAME = "phi_quant"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class PhiQuantSpec:
    """Hook specifications (pluggy). Every hook a backend may implement is here."""

    @hookspec
    def backend_info(self) -> "BackendInfo":
        """Describe this backend: CLI name, output format, runtime, hook contract version, the
        architectures it writes (``architectures``; the core refuses others before ``export``), and
        the ``--option`` names and ``--target`` values it accepts (the core refuses all others).

        :returns: a :class:`phi_quant.types.BackendInfo`.
        .. versionadded:: 0.1
        .. versionchanged:: contract 1.1 ``architectures``, ``options`` and ``targets``.
        """

    @hookspec
    def detect_hardware(self) -> "HardwareReport":
        """Report what this backend's runtime can use on this machine (devices, accelerators).

        Must be fast and must not raise when the runtime is missing: return
        ``HardwareReport(available=False, notes=[...])`` instead.

        :returns: a :class:`phi_quant.types.HardwareReport`.
        .. versionadded:: 0.1
        """

    @hookspec
    def supported_precisions(self) -> "list[PrecisionSpec]":
        """List the precisions this backend exports, each with its native scheme and thresholds, and
        the ``--group-size`` values and symmetry each accepts.

        :returns: a list of :class:`phi_quant.types.PrecisionSpec`, one per precision; its
            ``arch_thresholds`` may bound one architecture apart from ``thresholds``.
        .. versionadded:: 0.1
        .. versionchanged:: 1.1 ``group_sizes`` and ``symmetric`` declarations.
        .. versionchanged:: 1.2 ``PrecisionSpec.arch_thresholds``.
        """

    @hookspec
    def quantize(self, tensor: "SourceTensor", options: "ExportOptions", source: "ModelSource | None") -> "QuantizedTensor":
        """Quantize one tensor of the stream to this backend's layout for ``options.precision``.

        Called per tensor (by ``eval``, by tests and by the conformance kit, which checks that the
        bytes equal what ``export`` wrote for the same tensor); must not hold other tensors. The
        arrays are chosen by the same per-tensor plan ``export`` follows, which may depend on the
        whole model (tied embeddings, a size budget): ``source`` is the checkpoint the tensor came
        from, or None when the caller has only the tensor (then the tensor is planned alone).
        Raise :class:`phi_quant.errors.BadWeightsError` naming the tensor on NaN/Inf.

        :param tensor: the source tensor (lazy, memory-mapped).
        :param options: the export options (precision, group size, symmetry, scheme, recipe, ...).
        :param source: the opened checkpoint ``tensor`` belongs to, or None.
        :returns: a :class:`phi_quant.types.QuantizedTensor` holding the bytes ``export`` writes.
        .. versionadded:: 0.1
        .. versionchanged:: 1.3 ``source``; the result must equal what ``export`` writes.
        """

    @hookspec
    def tensor_plan(self, source: "ModelSource", options: "ExportOptions") -> "TensorPlan":
        """The per-tensor plan ``export`` follows for ``source`` under ``options``: every tensor's scheme.

        Optional. The core reads it before ``export`` when a recipe chooses values from calibration
        data: activation-aware scaling (``--recipe awq``) searches each matmul's scale against the
        scheme this backend will store it in. It must be the plan ``export`` and ``quantize`` use
        (the one :attr:`ExportResult.quantization` summarises), and must not read tensor data
        beyond what planning itself needs.

        :param source: the opened checkpoint.
        :param options: the export options.
        :returns: a :class:`phi_quant.quant.plan.TensorPlan`.
        .. versionadded:: contract 1.4
        """

    @hookspec
    def export(
        self,
        source: "ModelSource",
        output_dir: Path,
        options: "ExportOptions",
        progress: "Progress",
    ) -> "ExportResult":
        """Write the model in this backend's format into ``output_dir`` (an empty temporary directory).

        Stream ``source.tensors()`` one at a time, in the order of the architecture's stream plan
        (``source.config.arch.stream_plan``); copy tokenizer files as the runtime needs them;
        call ``progress.advance(nbytes)`` per source tensor. Raise
        :class:`phi_quant.errors.UnsupportedPrecisionError` for a precision or option it cannot do.
        Only checkpoints of an architecture listed in ``BackendInfo.architectures`` reach it. The
        options arrive checked against the backend's declarations (values converted to their
        declared kinds); ``source`` arrives validated (headers, paths, config, tokenizer).

        :param source: the opened checkpoint (config and its ``arch``, tokenizer files, tensor stream).
        :param output_dir: empty directory to write into; the core moves it into place on success.
        :param options: what the user asked for.
        :param progress: progress sink, advanced in bytes of source tensors consumed.
        :returns: a :class:`phi_quant.types.ExportResult` listing files and choices made.
        .. versionadded:: 0.1
        """

    @hookspec
    def load_model(self, path: Path, options: "dict") -> "LoadedModel":
        """Open an exported model directory in the vendor runtime for ``run`` and ``eval``.

        :param path: a directory this backend's ``export`` wrote.
        :param options: runtime options such as ``{"context_length": 4096, "threads": 2}``.
        :returns: an object implementing :class:`phi_quant.types.LoadedModel`.
        .. versionadded:: 0.1
        """
