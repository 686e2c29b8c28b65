"""Save the IR skeleton, then stream the real weights into its ``.bin``.

``ov.save_model`` needs every constant's data alive at save time; holding a whole model that way
is what makes the usual export need RAM for the whole checkpoint. We save a model whose weight
constants are untouched zero pages (see :mod:`.weights`), read the offsets the serializer gave
each of them from the XML, and afterwards write each tensor's packed bytes at its offset while the
checkpoint is streamed: peak memory is about one tensor.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openvino as ov

from phi_quant.errors import ExportFailedError

from .weights import Slot

__all__ = ["save_skeleton", "BinWriter"]

_DECOMPRESSION_RT = '\n\t\t\t<rt_info>\n\t\t\t\t<attribute name="decompression" version="0" />\n\t\t\t</rt_info>'


def save_skeleton(model: ov.Model, xml_path: Path, slots: list[Slot], decompression_converts: set[str]) -> dict[str, int]:
    """Save ``model`` to ``xml_path`` (+ .bin) and return the .bin offset of every slot's constant.

    ``decompression_converts`` names the f16->f32 Convert layers to mark as weight decompression,
    as OpenVINO's own fp16 compression marks them (the Python API cannot set that attribute), so
    the CPU plugin keeps those weights in f16 instead of folding them to f32.
    """
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    text = xml_path.read_text(encoding="utf-8")
    if decompression_converts:
        text = _mark_decompression(text, decompression_converts)
        xml_path.write_text(text, encoding="utf-8")
    by_name: dict[str, tuple[int, int, str]] = {}
    root = ET.fromstring(text)
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        by_name[layer.get("name")] = (int(data.get("offset")), int(data.get("size")), data.get("element_type"))
    offsets: dict[str, int] = {}
    seen: set[int] = set()
    for slot in slots:
        if slot.const_name not in by_name:
            raise ExportFailedError(f"internal error: constant {slot.const_name} missing from the saved IR")
        offset, size, etype = by_name[slot.const_name]
        if size != slot.nbytes or etype != slot.ov_type:
            raise ExportFailedError(
                f"internal error: {slot.const_name} saved as {etype} {size} bytes, expected {slot.ov_type} {slot.nbytes}"
            )
        if offset in seen:
            raise ExportFailedError(f"internal error: two weight constants share offset {offset} ({slot.const_name})")
        seen.add(offset)
        offsets[slot.const_name] = offset
    return offsets


def _mark_decompression(text: str, names: set[str]) -> str:
    def repl(match: re.Match) -> str:
        if match.group(1) not in names:
            return match.group(0)
        return match.group(0) + _DECOMPRESSION_RT

    return re.sub(r'<layer id="\d+" name="([^"]+)" type="Convert" version="opset1">\s*<data destination_type="f32" />', repl, text)


class BinWriter:
    """Writes packed arrays into the saved ``.bin`` at the offsets of their slots."""

    def __init__(self, bin_path: Path, slots: list[Slot], offsets: dict[str, int]):
        self._fd = os.open(bin_path, os.O_WRONLY)
        self._slots: dict[tuple[str, str], Slot] = {(s.tensor_name, s.key): s for s in slots}
        self._offsets = offsets
        self._written: dict[str, int] = {}

    def keys_for(self, tensor_name: str) -> list[str]:
        return [k for (t, k) in self._slots if t == tensor_name]

    def write(self, tensor_name: str, key: str, array: np.ndarray, at: int = 0) -> None:
        """Write ``array``'s bytes ``at`` bytes into the constant of (tensor, key)."""
        slot = self._slots[(tensor_name, key)]
        data = np.ascontiguousarray(array)
        if at + data.nbytes > slot.nbytes:
            raise ExportFailedError(
                f"internal error: {slot.const_name} gets bytes up to {at + data.nbytes}, the IR holds {slot.nbytes}"
            )
        view = memoryview(data.reshape(-1).view(np.uint8))
        offset = self._offsets[slot.const_name] + at
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        self._written[slot.const_name] = self._written.get(slot.const_name, 0) + data.nbytes

    def missing(self) -> list[str]:
        """Constants not (completely) written yet."""
        return sorted(s.const_name for s in self._slots.values() if self._written.get(s.const_name, 0) != s.nbytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
