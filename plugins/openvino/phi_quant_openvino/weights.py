"""Weight constants of the IR and the decompression subgraphs around them.

Every constant that holds checkpoint data is created as a *placeholder*: zero pages of the right
type and shape with a unique marker in its first bytes (so the serializer's de-duplication of equal
constants cannot merge two of them). Untouched zero pages cost no memory, so the whole graph can
be built and saved at once; the real bytes are written into the saved ``.bin`` afterwards, one
tensor at a time, at the offsets the serializer chose (see :mod:`.ir_file`).

The subgraph around a compressed constant is the one NNCF emits::

    Constant(u8|i8|u4|i4) -> Convert(f16) [-> Subtract(Convert(zero_point, f16))]
        -> Multiply(scale f16) [-> Reshape [N, K] when grouped] -> Convert(f32)

and fp16 weights are ``Constant(f16) -> Convert(f32)``, as OpenVINO's own fp16 compression does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from . import constants as C
from .schemes import TensorScheme

__all__ = ["Slot", "WeightBank", "packed_nbytes", "array_layout"]

_OV_TYPES = {
    "f32": ov.Type.f32,
    "f16": ov.Type.f16,
    "u8": ov.Type.u8,
    "i8": ov.Type.i8,
    "u4": ov.Type.u4,
    "i4": ov.Type.i4,
}
_BITS = {"f32": 32, "f16": 16, "u8": 8, "i8": 8, "u4": 4, "i4": 4}


def packed_nbytes(ov_type: str, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    return (n * _BITS[ov_type] + 7) // 8


@dataclass(frozen=True)
class Slot:
    """One constant of the IR that holds checkpoint data: which tensor and which array of it."""

    const_name: str  # friendly name of the Constant in the IR
    tensor_name: str  # checkpoint tensor it comes from
    key: str  # "weight" | "scale" | "zero_point"
    ov_type: str  # "f32", "f16", "u8", "i8", "u4", "i4"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return packed_nbytes(self.ov_type, self.shape)


def array_layout(scheme: TensorScheme, shape: tuple[int, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The arrays a tensor of ``shape`` is stored as under ``scheme``: key -> (OpenVINO type, shape)."""
    if scheme.mode == C.FP32:
        return {"weight": ("f32", shape)}
    if scheme.mode == C.FP16:
        return {"weight": ("f16", shape)}
    n, k = shape
    storage = C.STORAGE_TYPE[scheme.mode]
    if scheme.group_size:
        g = scheme.group_size
        wshape, sshape = (n, k // g, g), (n, k // g, 1)
    else:
        wshape, sshape = (n, k), (n, 1)
    out = {"weight": (storage, wshape), "scale": ("f16", sshape)}
    if scheme.mode in (C.INT8_ASYM, C.INT4_ASYM):
        out["zero_point"] = (storage, sshape)
    return out


class WeightBank:
    """Creates placeholder constants and their decompression subgraphs; remembers every slot."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self._buffers: list[np.ndarray] = []  # keep placeholder memory alive until the IR is saved

    def _placeholder(self, const_name: str, tensor_name: str, key: str, ov_type: str, shape: tuple[int, ...]):
        slot = Slot(const_name, tensor_name, key, ov_type, tuple(int(d) for d in shape))
        marker = len(self.slots) + 1
        buf = np.zeros(slot.nbytes, dtype=np.uint8)
        stamp = np.frombuffer(np.uint64(marker).tobytes(), dtype=np.uint8)[: min(8, slot.nbytes)]
        buf[: stamp.size] = stamp
        tensor = ov.Tensor(buf, ov.Shape(list(slot.shape)), _OV_TYPES[ov_type])
        const = ov.op.Constant(tensor, shared_memory=True)
        const.set_friendly_name(const_name)
        self.slots.append(slot)
        self._buffers.append(buf)
        return const

    def float_vector(self, tensor_name: str, length: int):
        """A 1-D f32 constant (norm weights): stored as f32 whatever the precision."""
        return self._placeholder(tensor_name, tensor_name, "weight", "f32", (length,))

    def matrix(self, tensor_name: str, shape: tuple[int, int], scheme: TensorScheme):
        """The f32 [N, K] output of the stored (maybe compressed) weight ``tensor_name``."""
        layout = array_layout(scheme, shape)
        wtype, wshape = layout["weight"]
        weight = self._placeholder(tensor_name, tensor_name, "weight", wtype, wshape)
        if scheme.mode == C.FP32:
            return weight
        if scheme.mode == C.FP16:
            return ops.convert(weight, ov.Type.f32, name=f"{tensor_name}/convert")
        x = ops.convert(weight, ov.Type.f16)
        if "zero_point" in layout:
            ztype, zshape = layout["zero_point"]
            zp = self._placeholder(f"{tensor_name}/zero_point", tensor_name, "zero_point", ztype, zshape)
            x = ops.subtract(x, ops.convert(zp, ov.Type.f16), name=f"{tensor_name}/zero_point/subtract")
        stype, sshape = layout["scale"]
        scale = self._placeholder(f"{tensor_name}/scale", tensor_name, "scale", stype, sshape)
        x = ops.multiply(x, scale, name=f"{tensor_name}/fq_weights_1")
        if scheme.group_size:
            x = ops.reshape(x, ops.constant(np.array(shape, dtype=np.int64)), special_zero=False)
        return ops.convert(x, ov.Type.f32, name=f"{tensor_name}/fq_weights_1/convert")

    def release(self) -> None:
        self._buffers.clear()
