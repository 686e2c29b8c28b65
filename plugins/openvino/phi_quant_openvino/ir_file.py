"""Save the IR skeleton, then stream the real weights into its ``.bin``.

``ov.save_model`` needs every constant's data alive at save time; holding a whole model that way
is what makes the usual export need RAM for the whole checkpoint. We serialize a model whose weight
constants are untouched zero pages (see :mod:`.weights`) and afterwards write each tensor's packed
bytes at its constant's offset while the checkpoint is streamed: peak memory is about one tensor.

The serializer writes the XML only; its ``.bin`` goes to the null device. Writing gigabytes of
placeholder zeros just to overwrite them cost as much CPU as quantizing (Phi-3.5-mini int4: 4.4
of 24 CPU-s) and doubled the disk writes. The offsets the serializer would have given are laid
out here by its own rule (OpenVINO's ``ConstantWriter``: constants in document order, each at the
end of the data so far unless an earlier constant holds the same bytes, which it then shares),
the ``.bin`` starts as a sparse file of that size holding the graph's small constants, and the
weights fill the rest. The XML and ``.bin`` are byte-identical to ``ov.save_model``'s; a test
pins that against the installed OpenVINO.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import passes

from phi_quant.errors import ExportFailedError

from .weights import Slot

__all__ = ["save_skeleton", "BinWriter"]

_DECOMPRESSION_RT = '\n\t\t\t<rt_info>\n\t\t\t\t<attribute name="decompression" version="0" />\n\t\t\t</rt_info>'
#: A Const layer's data element as the serializer writes it (its offset is what we fill in).
_CONST = re.compile(
    r'(<layer id="\d+" name="([^"]*)" type="Const" version="opset\d+">\s*'
    r'<data element_type="([^"]*)" shape="[^"]*" offset=")(\d+)(" size="(\d+)")'
)


def save_skeleton(model: ov.Model, xml_path: Path, slots: list[Slot], decompression_converts: set[str]) -> dict[str, int]:
    """Save ``model`` to ``xml_path`` (+ .bin) and return the .bin offset of every slot's constant.

    ``decompression_converts`` names the f16->f32 Convert layers to mark as weight decompression,
    as OpenVINO's own fp16 compression marks them (the Python API cannot set that attribute), so
    the CPU plugin keeps those weights in f16 instead of folding them to f32.
    """
    text = _serialize_xml(model, xml_path)
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    constants = {op.get_friendly_name(): op for op in ops}
    if len(constants) != len(ops):
        raise ExportFailedError("internal error: two constants of the graph share a name")
    text, layout, size = _lay_out(text, constants)
    if decompression_converts:
        text = _mark_decompression(text, decompression_converts)
    xml_path.write_text(text, encoding="utf-8")
    slot_names = {s.const_name for s in slots}
    _write_small_constants(xml_path.with_suffix(".bin"), size, [(o, d) for n, (o, d, _, first) in layout.items()
                                                               if first and n not in slot_names])
    offsets: dict[str, int] = {}
    seen: set[int] = set()
    for slot in slots:
        if slot.const_name not in layout:
            raise ExportFailedError(f"internal error: constant {slot.const_name} missing from the saved IR")
        offset, data, etype, _ = layout[slot.const_name]
        if data.nbytes != slot.nbytes or etype != slot.ov_type:
            raise ExportFailedError(
                f"internal error: {slot.const_name} saved as {etype} {data.nbytes} bytes, expected {slot.ov_type} {slot.nbytes}"
            )
        if offset in seen:
            raise ExportFailedError(f"internal error: two weight constants share offset {offset} ({slot.const_name})")
        seen.add(offset)
        offsets[slot.const_name] = offset
    return offsets


def _serialize_xml(model: ov.Model, xml_path: Path) -> str:
    """The XML of ``ov.save_model(model, xml_path, compress_to_fp16=False)``, every offset 0 (no .bin written)."""
    model.set_rt_info(ov.get_version(), "OpenVINO Runtime")  # the one entry save_model adds
    manager = passes.Manager()
    manager.register_pass(passes.Serialize(str(xml_path), os.devnull))
    manager.run_passes(model)
    return xml_path.read_text(encoding="utf-8")


def _lay_out(text: str, constants: dict[str, ov.Node]) -> tuple[str, dict[str, tuple[int, np.ndarray, str, bool]], int]:
    """Give every Const layer of ``text`` the offset ``ov.save_model`` gives it.

    :returns: the XML with offsets, ``name -> (offset, bytes, element type, first holder of these
        bytes)`` and the size of the .bin.
    """
    layout: dict[str, tuple[int, np.ndarray, str, bool]] = {}
    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    end = 0

    def place(match: re.Match) -> str:
        nonlocal end
        name, etype, nbytes = html.unescape(match.group(2)), match.group(3), int(match.group(6))
        if name not in constants:
            raise ExportFailedError(f"internal error: the IR has a constant {name!r} the graph does not")
        data = np.ascontiguousarray(constants[name].get_tensor_view().data).reshape(-1).view(np.uint8)
        if data.nbytes != nbytes:
            raise ExportFailedError(f"internal error: constant {name} has {data.nbytes} bytes, the IR says {nbytes}")
        twin = next((o for o, d in by_size.get(nbytes, ()) if _same_bytes(d, data)), None)
        if twin is None:
            offset, end = end, end + nbytes
            by_size.setdefault(nbytes, []).append((offset, data))
        else:
            offset = twin
        layout[name] = (offset, data, etype, twin is None)
        return f"{match.group(1)}{offset}{match.group(5)}"

    return _CONST.sub(place, text), layout, end


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal contents; the prefix test keeps placeholders (unique markers up front) from being copied."""
    return a[:64].tobytes() == b[:64].tobytes() and a.tobytes() == b.tobytes()


def _write_small_constants(bin_path: Path, size: int, blobs: list[tuple[int, np.ndarray]]) -> None:
    """Create ``bin_path`` with ``size`` bytes (sparse: never-written ranges read as zeros) and ``blobs`` in place."""
    fd = os.open(bin_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in blobs:
            _pwrite_all(fd, memoryview(data), offset)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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
        _pwrite_all(self._fd, memoryview(data.reshape(-1).view(np.uint8)), self._offsets[slot.const_name] + at)
        self._written[slot.const_name] = self._written.get(slot.const_name, 0) + data.nbytes

    def missing(self) -> list[str]:
        """Constants not (completely) written yet."""
        return sorted(s.const_name for s in self._slots.values() if self._written.get(s.const_name, 0) != s.nbytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
