"""An exported model opened in OpenVINO: full-sequence logits through ``openvino.Core``, text
through ``openvino_genai.LLMPipeline`` (greedy) and the tokenizer IRs.

The CPU plugin runs f32 graphs in bf16 on CPUs with AMX or AVX512-BF16 unless told otherwise, and
keeps its KV cache in a reduced precision, and quantizes activations to int8 before matmuls with
compressed weights; all three would blur what the weights alone cost. We ask for f32 inference,
an f32 KV cache and no dynamic quantization unless ``options`` say otherwise
(``inference_precision``: "bf16", "f16" or "default" for the device's choice, which also restores
the other two defaults; ``kv_cache_precision``; ``dynamic_quantization_group_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phi_quant.errors import RuntimeLoadError

from . import constants as C

__all__ = ["OpenVINOModel", "compile_properties"]


def compile_properties(options: dict[str, Any]) -> dict[str, Any]:
    """OpenVINO properties for ``options`` (device-independent keys only)."""
    props: dict[str, Any] = {}
    device = str(options.get("device", C.CPU)).upper()
    precision = str(options.get("inference_precision", "f32"))
    if precision != "default":
        props["INFERENCE_PRECISION_HINT"] = precision
    kv = str(options.get("kv_cache_precision", "f32" if precision == "f32" else "default"))
    if kv != "default" and device == C.CPU:
        props["KV_CACHE_PRECISION"] = kv
    dq = options.get("dynamic_quantization_group_size", 0 if precision == "f32" else None)
    if dq is not None and device == C.CPU:
        # the CPU plugin quantizes activations to int8 for compressed-weight matmuls by default;
        # 0 turns that off, so int8/int4 results show the weights' error alone
        props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(dq)
    threads = options.get("threads")
    if threads and device == C.CPU:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


class OpenVINOModel:
    """:class:`phi_quant.types.LoadedModel` for an OpenVINO GenAI folder."""

    def __init__(self, path: Path, options: dict[str, Any] | None = None):
        import openvino as ov
        import openvino_genai as og

        self.path = Path(path)
        self.options = dict(options or {})
        self.device = str(self.options.get("device", C.CPU)).upper()
        self._props = compile_properties(self.options)
        if not (self.path / C.MODEL_XML).exists():
            raise RuntimeLoadError(f"{self.path} has no {C.MODEL_XML}; is it an OpenVINO export of phi-quant?")
        try:
            self._core = ov.Core()
            self._compiled = self._core.compile_model(str(self.path / C.MODEL_XML), self.device, self._props)
            self._tokenizer = og.Tokenizer(str(self.path))
        except RuntimeError as exc:
            raise RuntimeLoadError(f"OpenVINO could not load {self.path} on {self.device}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        self._pipe = None
        self.vocab_size = self._read_vocab_size()

    def _read_vocab_size(self) -> int:
        return int(self._compiled.output(C.LOGITS).get_partial_shape()[2].get_length())

    @property
    def pipeline(self):
        """The LLMPipeline, created on first use (it compiles the model a second time)."""
        if self._pipe is None:
            import openvino_genai as og

            try:
                self._pipe = og.LLMPipeline(str(self.path), self.device, **self._props)
            except RuntimeError as exc:
                raise RuntimeLoadError(f"openvino_genai.LLMPipeline could not load {self.path}: {exc}") from exc
        return self._pipe

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [int(i) for i in out.input_ids.data[0]]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids])

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), vocab]: one full-sequence run from an empty cache."""
        ids = np.asarray(list(ids), dtype=np.int64)[None, :]
        if ids.shape[1] == 0:
            raise ValueError("logits() needs at least one token")
        self._request.reset_state()
        out = self._request.infer(
            {
                C.INPUT_IDS: ids,
                C.ATTENTION_MASK: np.ones_like(ids),
                C.POSITION_IDS: np.arange(ids.shape[1], dtype=np.int64)[None, :],
                C.BEAM_IDX: np.zeros(1, dtype=np.int32),
            }
        )
        logits = np.array(out[self._compiled.output(C.LOGITS)][0], dtype=np.float32)
        self._request.reset_state()
        return logits

    def step_logits(self, ids: Sequence[int], chunks: Sequence[int]) -> np.ndarray:
        """Logits of ``ids`` fed in chunks through the stateful KV cache (for cache tests)."""
        ids = list(ids)
        self._request.reset_state()
        out, start = [], 0
        for n in chunks:
            part = np.asarray(ids[start : start + n], dtype=np.int64)[None, :]
            r = self._request.infer(
                {
                    C.INPUT_IDS: part,
                    C.ATTENTION_MASK: np.ones((1, start + n), dtype=np.int64),
                    C.POSITION_IDS: np.arange(start, start + n, dtype=np.int64)[None, :],
                    C.BEAM_IDX: np.zeros(1, dtype=np.int32),
                }
            )
            out.append(np.array(r[self._compiled.output(C.LOGITS)][0], dtype=np.float32))
            start += n
        self._request.reset_state()
        return np.concatenate(out, axis=0)

    def _greedy_config(self, max_new_tokens: int) -> Any:
        """The pipeline's generation config (its EOS ids and limits) switched to greedy search."""
        config = self.pipeline.get_generation_config()
        config.max_new_tokens = int(max_new_tokens)
        config.do_sample = False
        config.num_beams = 1
        return config

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        config = self._greedy_config(max_new_tokens)
        config.apply_chat_template = bool(chat)
        return str(self.pipeline.generate(prompt, config))

    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy token ids from token ids (no tokenizer involved): for comparisons with the oracle."""
        import openvino as ov

        config = self._greedy_config(max_new_tokens)
        ids = np.asarray(list(prompt_ids), dtype=np.int64)[None, :]
        from openvino_genai import TokenizedInputs

        inputs = TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        result = self.pipeline.generate(inputs, config)
        return [int(t) for t in result.tokens[0]]

    def close(self) -> None:
        self._pipe = None
        self._request = None
        self._compiled = None
