"""One mixture-of-experts layer's expert weights, stacked the way ``com.microsoft.MoE`` / ``QMoE``
read them, written expert by expert as the checkpoint streams past.

onnxruntime's CPU kernels take each layer's experts as a few stacked tensors (the layout is in
the operators' schemas and pinned by ``tests/test_phimoe.py``):

* ``fc1`` ``[experts, 2 * inter, hidden]``: the gate (w1) and up (w3) rows *interleaved*
  (``swiglu_fusion=1``: row ``2i`` is gate row ``i``, row ``2i + 1`` up row ``i``); the CPU
  kernels refuse a separate ``fc3`` and the concatenated layout;
* ``fc2`` ``[experts, hidden, inter]``: the down projections (w2), as Hugging Face stores them.

Float experts (``MoE``) hold the values; quantized ones (``QMoE``, ``weights_prepacked=0``) hold
each expert's MatMulNBits bytes unchanged: ``B`` rows ``[k_blocks * blob]``, ``scales``
``[rows, k_blocks]`` and, when asymmetric, packed ``zero_points`` ``[rows, ceil(k_blocks*bits/8)]``.
So every expert goes through the same kernel, scheme and bytes as any other MatMul weight.

The stacked tensors are allocated in the external-data file when the layer's first expert
arrives; every later chunk of rows is quantized or converted and written straight into its
place (one positional write per row for the interleaved ``fc1``), so nothing but one chunk is
ever held, whatever the number of experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from phi_quant.errors import UnsupportedModelError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import SourceTensor, TensorRole
from phi_quant.quant.digest import TensorDigest

from .dtypes import ONNX_FLOAT_TYPES, convert, to_float32
from .external_data import ExternalDataWriter, Region
from .plan import Storage
from .weights import CHUNK_ELEMENTS, check_finite, pack_nbits, rows_of

__all__ = ["StackedExperts", "Stacked"]


@dataclass
class Stacked:
    """One stacked input of the MoE node (``fc1`` or ``fc2``): its initializers and regions."""

    weight: TensorProto
    regions: dict[str, Region]
    row_bytes: dict[str, int]
    scales: TensorProto | None = None
    zero_points: TensorProto | None = None


class StackedExperts:
    """The experts of one layer, as ``fc1`` / ``fc2`` initializers filled as tensors arrive.

    ``storage`` is every expert's storage in the export's plan (one per layer: the plan refuses a
    layer whose experts it would store differently, :func:`plan.check_expert_stacks`): a float kind
    (fp32, fp16, bf16) or a MatMulNBits scheme. ``recipe`` / ``context_for`` give the values, as
    for every other tensor. :attr:`digests` holds each expert tensor's byte fingerprint, fed with
    the rows as they are written (what the quantize hook's arrays hash to).
    """

    def __init__(self, writer: ExternalDataWriter, prefix: str, config: PhiConfig, storage: Storage, *,
                 scale_kind: str, threads: int | None = None, recipe=None, context_for=None):
        self.writer, self.prefix, self.storage, self.kind = writer, prefix, storage, storage.kind
        self.experts, self.hidden, self.inter = config.num_experts, config.hidden_size, config.intermediate_size
        self.quantized = storage.quantized
        scheme = storage.scheme
        self.bits = scheme.bits if self.quantized else 0
        self.block_size = scheme.group if self.quantized else 0
        self.symmetric = scheme.symmetric if self.quantized else True
        self.scale_kind, self.threads = scale_kind, threads
        self.recipe, self.context_for = recipe, context_for
        self.digests: dict[str, str] = {}
        self._seen: set[tuple[TensorRole, int]] = set()
        self.fc1 = self._allocate("fc1", rows=2 * self.inter, k=self.hidden)
        self.fc2 = self._allocate("fc2", rows=self.hidden, k=self.inter)

    # -- layout --------------------------------------------------------------------------------
    def _allocate(self, which: str, rows: int, k: int) -> Stacked:
        e, w = self.experts, self.writer
        name = f"{self.prefix}.{which}"
        if not self.quantized:
            onnx_type = ONNX_FLOAT_TYPES[self.kind][0]
            item = 4 if self.kind == "fp32" else 2
            proto, region = w.allocate(f"{name}.weight", onnx_type, (e, rows, k))
            return Stacked(proto, {"weight": region}, {"weight": k * item})
        if k % self.block_size:
            raise UnsupportedModelError(
                f"QMoE needs hidden_size and intermediate_size divisible by the block size {self.block_size} "
                f"(this model has {self.hidden} and {self.inter}): choose a --group-size that divides both"
            )
        k_blocks = k // self.block_size
        blob = self.block_size * self.bits // 8
        zp_bytes = -(-k_blocks * self.bits // 8)
        scale_type = ONNX_FLOAT_TYPES[self.scale_kind][0]
        scale_item = 4 if self.scale_kind == "fp32" else 2
        weight, r_w = w.allocate(f"{name}.qweight", TensorProto.UINT8, (e, rows, k_blocks * blob))
        scales, r_s = w.allocate(f"{name}.scales", scale_type, (e, rows, k_blocks))
        regions = {"weight": r_w, "scales": r_s}
        row_bytes = {"weight": k_blocks * blob, "scales": k_blocks * scale_item}
        zps = None
        if not self.symmetric:
            zps, r_z = w.allocate(f"{name}.zero_points", TensorProto.UINT8, (e, rows, zp_bytes))
            regions["zero_points"], row_bytes["zero_points"] = r_z, zp_bytes
        return Stacked(weight, regions, row_bytes, scales, zps)

    def _place(self, role: TensorRole, expert: int) -> tuple[Stacked, int, int]:
        """(stacked input, first row of this expert's matrix, row stride) for one expert tensor."""
        i = self.inter
        if role is TensorRole.GATE:
            return self.fc1, expert * 2 * i, 2
        if role is TensorRole.UP:
            return self.fc1, expert * 2 * i + 1, 2
        if role is TensorRole.DOWN:
            return self.fc2, expert * self.hidden, 1
        raise UnsupportedModelError(f"role {role.value} is not an expert matrix")

    # -- filling -------------------------------------------------------------------------------
    def add(self, tensor: SourceTensor) -> None:
        """Write one expert's w1 / w3 / w2 into the stacked tensors."""
        role, expert = TensorRole(tensor.role), tensor.expert
        if expert is None or not 0 <= expert < self.experts:
            raise UnsupportedModelError(f"tensor {tensor.name} has no valid expert index ({expert})")
        if (role, expert) in self._seen:
            raise UnsupportedModelError(f"tensor {tensor.name}: expert {expert}'s {role.value} arrived twice")
        stacked, first, stride = self._place(role, expert)
        n, k = tensor.shape
        want = (self.inter, self.hidden) if role is not TensorRole.DOWN else (self.hidden, self.inter)
        if (n, k) != want:
            raise UnsupportedModelError(f"tensor {tensor.name} has shape {(n, k)}, expected {want}")
        step = max(1, CHUNK_ELEMENTS // max(1, k))
        digest = TensorDigest()
        context = self.context_for(tensor) if self.quantized and self.context_for else None
        for r0 in range(0, n, step):
            raw = rows_of(tensor, r0, r0 + step)
            if self.quantized:
                B, scales, zp = pack_nbits(raw, tensor.dtype, self.storage.scheme, tensor.name, self.threads,
                                           self.recipe, context)
                parts = {"weight": B.reshape(B.shape[0], -1), "scales": scales}
                if zp is not None:
                    parts["zero_points"] = zp
            else:
                block = to_float32(raw, tensor.dtype)
                check_finite(block, tensor)
                parts = {"weight": convert(block, "f32", self.kind)}
                del block
            for key, rows in parts.items():
                self._write_rows(stacked, key, rows, first + r0 * stride, stride)
                # the quantize hook's array names: MatMulNBits "B"/"scales"/"zero_points", float "weight"
                digest.update("B" if self.quantized and key == "weight" else key, rows)
            del raw, parts
        self.digests[tensor.name] = digest.hexdigest()
        self._seen.add((role, expert))

    @staticmethod
    def _write_rows(stacked: Stacked, key: str, rows: np.ndarray, first_row: int, stride: int) -> None:
        region, size = stacked.regions[key], stacked.row_bytes[key]
        rows = np.ascontiguousarray(rows)
        if stride == 1:
            region.write_at(first_row * size, rows)
            return
        for j in range(rows.shape[0]):
            region.write_at((first_row + j * stride) * size, rows[j])

    @property
    def complete(self) -> bool:
        return len(self._seen) == 3 * self.experts

    def missing(self) -> list[str]:
        roles = (TensorRole.GATE, TensorRole.UP, TensorRole.DOWN)
        return [f"expert {e} {r.value}" for r in roles for e in range(self.experts) if (r, e) not in self._seen]
