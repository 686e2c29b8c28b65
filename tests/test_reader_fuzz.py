"""Seeded fuzzing of the two readers that parse untrusted checkpoint bytes: the safetensors header
(:func:`read_header`) and the shard index (:func:`read_index`).

Thousands of mutations of a valid file, structural (a value replaced by a hostile one: a list, a
string, ``1e400``, ``NaN``, 10^30, JSON nested 100000 deep, a duplicate key, shifted or swapped
offsets, ``../`` and absolute shard names, a link out of the checkpoint) and byte-level (flips,
truncation, trailing bytes, a wrong length prefix). Every input must be read or refused with
:class:`CheckpointError`: any other exception, or one input taking longer than a second, fails.
The format's reference reader (the ``safetensors`` package) is the oracle for acceptance: a
header we accept must be one it accepts too, with the same tensors, and where we refuse what it
reads, the reason must be a key given twice (it silently keeps the last one; we refuse the
ambiguity).
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest

from phi_quant.errors import CheckpointError
from phi_quant.model.checkpoint_files import read_index
from phi_quant.model.safetensors_io import read_header

SEED = 20240518
HEADER_CASES = 3000
INDEX_CASES = 1500
BUDGET_S = 30.0  # CPU seconds per test; measured at ~4 s (wall time varies with the shared machine's load)
CASE_S = 1.0  # CPU seconds one input may take

try:  # the reference reader, where installed (the reference backend depends on it): the oracle for acceptance
    import safetensors
except ImportError:  # pragma: no cover - the fuzzing itself still runs
    safetensors = None

#: dtype, shape of the valid base file (sizes chosen so offsets are not multiples of each other).
BASE_TENSORS = [("a.weight", "F32", [2, 3]), ("b.bias", "BF16", [5]), ("c.empty", "F16", [0, 4]),
                ("d.ids", "I64", [1]), ("e.flag", "BOOL", [3])]
_SIZES = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "BOOL": 1, "U8": 1, "F64": 8}


class Raw:
    """A JSON fragment written as is (``1e400``, ``NaN``, 100000 nested brackets)."""

    def __init__(self, text: str):
        self.text = text


def dumps(value) -> str:
    """JSON text of ``value`` where :class:`Raw` parts are inserted verbatim and a list of pairs
    tagged ``("__pairs__", [...])`` becomes an object that may repeat keys."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, tuple) and value and value[0] == "__pairs__":
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value[1]) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def base_header() -> tuple[dict, int]:
    header: dict = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, dtype, shape in BASE_TENSORS:
        n = _SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    return header, pos


def hostile_value(rng: random.Random):
    return rng.choice([
        lambda: Raw("1e400"), lambda: Raw("-1e400"), lambda: Raw("NaN"), lambda: Raw("Infinity"),
        lambda: 10**30, lambda: -1, lambda: 1.5, lambda: 0, lambda: True, lambda: None, lambda: "",
        lambda: "abc", lambda: [], lambda: [1], lambda: [[0, 1]], lambda: {}, lambda: {"x": 1},
        lambda: Raw("[" * 100000 + "]" * 100000), lambda: Raw("{\"a\":" * 5000 + "1" + "}" * 5000),
        lambda: Raw("9" * 5000), lambda: "F8_E4M3", lambda: "float16", lambda: rng.randint(0, 200),
    ])()


def mutate_header(rng: random.Random, header: dict, data_len: int) -> tuple[object, int]:
    """One structural mutation; returns the header value to serialise and the data length."""
    h = json.loads(json.dumps(header))
    names = [n for n in h if n != "__metadata__"]
    kind = rng.randrange(12)
    name = rng.choice(names)
    if kind == 0:  # a whole entry replaced
        h[name] = hostile_value(rng)
    elif kind == 1:  # one field replaced
        h[name][rng.choice(["dtype", "shape", "data_offsets"])] = hostile_value(rng)
    elif kind == 2:  # one element of shape or offsets replaced
        field = rng.choice(["shape", "data_offsets"])
        if h[name][field]:
            h[name][field][rng.randrange(len(h[name][field]))] = hostile_value(rng)
    elif kind == 3:  # a field deleted, or an unknown one added
        if rng.random() < 0.5:
            del h[name][rng.choice(["dtype", "shape", "data_offsets"])]
        else:
            h[name]["extra"] = hostile_value(rng)
    elif kind == 4:  # overlap: an entry takes another's range
        other = rng.choice(names)
        h[name]["data_offsets"] = list(h[other]["data_offsets"])
        h[name]["shape"], h[name]["dtype"] = list(h[other]["shape"]), h[other]["dtype"]
    elif kind == 5:  # offsets shifted
        k = rng.choice([-4, -1, 1, 2, 8, 64])
        h[name]["data_offsets"] = [max(0, x + k) for x in h[name]["data_offsets"]]
    elif kind == 6:  # dtype changed (sizes may still agree)
        h[name]["dtype"] = rng.choice(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F99", "f32", ""])
    elif kind == 7:  # metadata replaced
        h["__metadata__"] = rng.choice([hostile_value(rng), {"k": hostile_value(rng)}, None, {"k": "v"}])
    elif kind == 8:  # a duplicate key
        pairs = list(h.items()) + [(name, h[name])]
        rng.shuffle(pairs)
        return ("__pairs__", pairs), data_len
    elif kind == 9:  # the whole header is another JSON value
        return hostile_value(rng), data_len
    elif kind == 10:  # data section longer or shorter than the tensors
        return h, max(0, data_len + rng.choice([-3, -1, 1, 7, 100]))
    else:  # an extra tensor appended at the end (valid) or with a gap (invalid)
        gap = rng.choice([0, 0, 1, 5])
        h["z.extra"] = {"dtype": "U8", "shape": [3], "data_offsets": [data_len + gap, data_len + gap + 3]}
        return h, data_len + gap + 3
    return h, data_len


def serialise(header: object, data_len: int) -> bytes:
    blob = dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256)


def byte_mutation(rng: random.Random, data: bytearray) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # flip bytes of the header
        n = struct.unpack("<Q", data[:8])[0]
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, 8 + n)] = rng.randrange(256)
    elif kind == 1:
        data = data[: rng.randrange(len(data))]
    elif kind == 2:
        data[:8] = struct.pack("<Q", rng.choice([0, 1, 7, len(data) - 8, len(data), 2**40, 2**64 - 1,
                                                 rng.randrange(len(data))]))
    else:
        data += bytes(rng.randint(1, 9))
    return bytes(data)


def reference_accepts(path: Path) -> dict | None:
    """The tensors (name -> shape) the safetensors library reads from ``path``, or None if it refuses
    (or, without the library, what our own reader says: the fuzz still runs, without the oracle)."""
    if safetensors is None:
        try:
            return {n: list(e.shape) for n, e in read_header(path).entries.items()}
        except CheckpointError:
            return None
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - any refusal by the reference reader
        return None


def test_header_reader_reads_or_refuses_every_mutation(tmp_path):
    rng = random.Random(SEED)
    header, data_len = base_header()
    valid = serialise(header, data_len)
    path = tmp_path / "x.safetensors"
    path.write_bytes(valid)
    assert set(read_header(path).entries) == {n for n, _, _ in BASE_TENSORS} == set(reference_accepts(path))
    t0, w0 = time.process_time(), time.perf_counter()
    outcome = {"read": 0, "refused": 0, "refused_by_both": 0}
    slowest = 0.0
    for case in range(HEADER_CASES):
        if case % 3 == 2:
            blob = byte_mutation(rng, bytearray(valid))
        else:
            blob = serialise(*mutate_header(rng, header, data_len))
        path.write_bytes(blob)
        t = time.process_time()
        try:
            got = read_header(path)
        except CheckpointError as e:
            assert str(e) and "\n" not in str(e), (case, str(e))
            outcome["refused"] += 1
            if reference_accepts(path) is None:
                outcome["refused_by_both"] += 1
            else:  # we are stricter than the reference only about a key given twice (it keeps the last)
                assert "appears twice" in str(e), (case, str(e))
        except BaseException as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(e).__name__}: {e!s:.200} for header {blob[8:200]!r}")
        else:
            outcome["read"] += 1
            theirs = reference_accepts(path)
            assert theirs is not None, f"case {case}: we read a header the reference refuses: {blob[8:300]!r}"
            assert {n: list(e.shape) for n, e in got.entries.items()} == theirs, case
            for e in got.entries.values():
                assert e.offset >= 8 and e.offset + e.nbytes <= len(blob)
        slowest = max(slowest, time.process_time() - t)
    elapsed = time.process_time() - t0
    print(f"{HEADER_CASES} header mutations in {elapsed:.1f} s CPU ({time.perf_counter() - w0:.1f} s wall): "
          f"{outcome}, slowest {slowest * 1000:.0f} ms")
    assert outcome["read"] > 50 and outcome["refused"] > 1000, outcome  # the mutations reach both sides
    assert slowest < CASE_S and elapsed < BUDGET_S


def mutate_index(rng: random.Random, shards: list[str]) -> object:
    weight_map: dict = {f"t{i}": rng.choice(shards) for i in range(6)}
    index: dict = {"metadata": {"total_size": 123}, "weight_map": weight_map}
    kind = rng.randrange(7)
    key = rng.choice(list(weight_map))
    if kind == 0:
        weight_map[key] = hostile_value(rng)
    elif kind == 1:
        weight_map[key] = rng.choice(["../outside.safetensors", "/etc/passwd", "a/../../b.safetensors", "..",
                                      "sub/../model-1.safetensors", "link-out.safetensors", "", "x\x00y",
                                      "model-1.safetensors", "./model-2.safetensors"])
    elif kind == 2:
        index["weight_map"] = hostile_value(rng)
    elif kind == 3:
        del index["weight_map"]
    elif kind == 4:
        return hostile_value(rng)
    elif kind == 5:
        index["metadata"] = hostile_value(rng)
    return index


def test_index_reader_reads_or_refuses_every_mutation(tmp_path):
    rng = random.Random(SEED + 1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shards = ["model-1.safetensors", "model-2.safetensors"]
    for s in shards:
        (ckpt / s).write_bytes(b"")
    (tmp_path / "outside.safetensors").write_bytes(b"secret")
    (ckpt / "link-out.safetensors").symlink_to(tmp_path / "outside.safetensors")
    path = ckpt / "model.safetensors.index.json"
    t0, w0 = time.process_time(), time.perf_counter()
    slowest = 0.0
    outcome = {"read": 0, "refused": 0}
    for case in range(INDEX_CASES):
        text = dumps(mutate_index(rng, shards)).encode()
        if case % 4 == 3:  # bytes: truncated, flipped, not UTF-8
            data = bytearray(text)
            if rng.random() < 0.5:
                data = data[: rng.randrange(len(data) + 1)]
            else:
                data[rng.randrange(len(data))] = rng.choice([0x00, 0x22, 0x7B, 0xFF, 0xC3])
            text = bytes(data)
        path.write_bytes(text)
        t = time.process_time()
        try:
            weight_map = read_index(path)
        except CheckpointError as e:
            assert str(e) and "\n" not in str(e).replace("\\n", ""), (case, str(e))
            outcome["refused"] += 1
        except BaseException as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(e).__name__}: {e!s:.200} for index {text[:200]!r}")
        else:
            outcome["read"] += 1
            assert weight_map and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
            for shard in weight_map.values():
                assert (ckpt / shard).resolve().is_relative_to(ckpt.resolve()), (case, shard)
        slowest = max(slowest, time.process_time() - t)
    elapsed = time.process_time() - t0
    print(f"{INDEX_CASES} index mutations in {elapsed:.1f} s CPU ({time.perf_counter() - w0:.1f} s wall): "
          f"{outcome}, slowest {slowest * 1000:.0f} ms")
    assert outcome["read"] > 100 and outcome["refused"] > 300, outcome
    assert slowest < CASE_S and elapsed < BUDGET_S
