"""Conversion at full scale: every backend x precision against the I/O floor of the same checkpoint.

    python bench/scale.py                                  # Phi-3.5-mini-shaped, 4 backends x int4/int8/fp16
    python bench/scale.py --model phi4 --precisions int4 --remove-checkpoint
    python bench/scale.py --model phi3.5-mini --layers 4  # a smaller run with the same tensor shapes
    python bench/scale.py --model kit                      # the kit's 1.1 GB checkpoint (RSS comparison)

The checkpoint is generated once (streaming, numpy only: ``phi_quant.testing.factory.
make_shaped_checkpoint`` with the real model's shapes and config) under ``--dir`` (default
/tmp/scale) and reused by later runs. Then, in one run:

1. the floor: a cold read of the checkpoint's files (evicted from the page cache first with
   ``posix_fadvise(DONTNEED)``), a warm read, and a read + write copy of the same bytes (shard by
   shard: a shard's copy is deleted once the next one is written);
2. ``phi-quant quantize`` for every backend x precision, each in a fresh process, with the source
   evicted first (``--cache cold``, the default, as for the copy) or left cached (``--cache warm``).

For each it prints wall time, CPU time (user + system of the process and its children, from
``wait4``), peak RSS of the process tree and output size, each time also as a ratio to the copy
floor, and the load average before and after. Each output is deleted right after it is measured,
and no step starts if it would leave less than ``--min-free-gb`` of free disk.

Not a test: the numbers depend on the machine and its load. Results go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

BACKENDS = ("llamacpp", "mlx", "onnx", "openvino")
PRECISIONS = ("int4", "int8", "fp16")
#: Rough output size per source byte (bf16), to refuse a step that would fill the disk.
OUTPUT_RATIO = {"int4": 0.35, "int8": 0.6, "fp16": 1.05, "fp32": 2.1}
_BUF = 16 << 20
#: Bumped when the generated checkpoints change; part of the cache directory's name.
GENERATOR = "1"


# -- the checkpoint ------------------------------------------------------------------------------

def _spec(model: str, layers: int | None):
    from phi_quant.testing.factory import FULL_SIZE

    spec = FULL_SIZE[model]
    return dataclasses.replace(spec, layers=layers) if layers else spec


def checkpoint(model: str, layers: int | None, root: Path, min_free: int) -> Path:
    """The cached generated checkpoint, written on first use into a temporary directory and renamed."""
    from phi_quant.testing import factory

    if model == "kit":
        name, size = f"kit-{factory.FACTORY_VERSION}-g{GENERATOR}", 1_100_000_000
        build = lambda d: factory.make_large_checkpoint(d)  # noqa: E731
    else:
        spec = _spec(model, layers)
        size = factory.checkpoint_bytes(spec)
        name = f"{model}-{spec.layers}L-bf16-g{GENERATOR}"
        build = lambda d: factory.make_shaped_checkpoint(d, spec, shard_bytes=factory.FULL_SIZE_SHARD_BYTES)  # noqa: E731
    target = root / name
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    _need_disk(root, size, min_free, f"generating {name}")
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"# generating {name} ({size / 1e9:.2f} GB) in {root} ...", flush=True)
    build(tmp)
    (tmp / ".complete").write_text(json.dumps({"model": model, "layers": layers, "bytes": size}))
    os.rename(tmp, target)
    print(f"# generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return target


def weight_files(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def _need_disk(where: Path, nbytes: int, min_free: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free - nbytes < min_free:
        raise SystemExit(f"{what} needs {nbytes / 1e9:.1f} GB but only {free / 1e9:.1f} GB are free on {where}; "
                         f"keeping at least {min_free / 1e9:.0f} GB free (--min-free-gb)")


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (written pages are flushed first: only clean ones go)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- measurements --------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    what: str
    wall: float
    cpu: float
    peak_rss: int = 0
    out_bytes: int = 0
    error: str = ""


def _timed(label: str, fn) -> Row:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Row(label, t1 - t0, cpu)


def read_all(files: list[Path]) -> None:
    buf = memoryview(bytearray(_BUF))
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def copy_all(files: list[Path], dst_dir: Path) -> int:
    """Copy every shard into ``dst_dir``; a shard's copy is deleted once the next one is written, so
    the disk holds at most two shards' copies (Phi-4's 29 GB would not fit twice)."""
    buf, total, previous = memoryview(bytearray(_BUF)), 0, None
    for f in files:
        with open(f, "rb", buffering=0) as src, open(dst_dir / f.name, "wb", buffering=0) as dst:
            while n := src.readinto(buf):
                view = buf[:n]
                while view:
                    view = view[dst.write(view):]
                total += n
        if previous is not None:
            previous.unlink()
        previous = dst_dir / f.name
    return total


def floor(files: list[Path], work: Path, fits_in_cache: bool, min_free: int) -> dict[str, Row]:
    rows = {}
    evict(files)
    rows["cold"] = _timed("cold read (evicted)", lambda: read_all(files))
    label = "warm read" + ("" if fits_in_cache else " (larger than the page cache: cold again)")
    rows["warm"] = _timed(label, lambda: read_all(files))
    _need_disk(work, 2 * max(f.stat().st_size for f in files), min_free, "the copy floor")
    dst = work / "copy"
    dst.mkdir(parents=True, exist_ok=True)
    evict(files)
    try:
        rows["copy"] = _timed("read + write copy (source evicted)", lambda: copy_all(files, dst))
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    rows["copy"].out_bytes = sum(f.stat().st_size for f in files)
    return rows


_CLI = """
import sys
sys.argv = {argv!r}
from phi_quant.cli import main
main()
"""


def convert(ckpt: Path, backend: str, precision: str, work: Path, cold: bool, threads: int | None,
            pythonpath: str | None = None) -> Row:
    from phi_quant.testing.rss import run_with_peak_rss

    out = work / f"out-{backend}-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # the previous step's dirty pages are not this one's cost
    if cold:
        evict(weight_files(ckpt))
    argv = ["phi-quant", "quantize", str(ckpt), "-b", backend, "-p", precision, "-o", str(out), "--quiet"]
    if threads:
        argv += ["--threads", str(threads)]
    try:
        env = None
        if pythonpath:  # run another checkout's code (before/after comparisons)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")])))
        res = run_with_peak_rss(_CLI.format(argv=argv), env=env)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    err = "" if res.returncode == 0 else (res.output.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    return Row(f"{backend} {precision}", res.wall_seconds, res.cpu_seconds, res.tree_peak_rss, size, err)


# -- report --------------------------------------------------------------------------------------

def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _print_row(r: Row, copy: Row) -> None:
    rss = f"{r.peak_rss / 2**20:.0f}" if r.peak_rss else "-"
    out = f"{r.out_bytes / 1e9:.2f}" if r.out_bytes else "-"
    cells = [r.what, f"{r.wall:.1f}", f"{r.wall / copy.wall:.2f}", f"{r.cpu:.1f}", f"{r.cpu / copy.cpu:.2f}", rss, out]
    if r.error:
        cells[1:] = ["failed: " + r.error[:120], "", "", "", "", ""]
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    from phi_quant.testing.factory import FULL_SIZE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="phi3.5-mini", choices=[*FULL_SIZE, "kit"])
    ap.add_argument("--layers", type=int, help="decoder layers (default: the real model's)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/scale"), help="checkpoints and outputs (outside the repo)")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold", help="source pages before each conversion")
    ap.add_argument("--threads", type=int, help="pass --threads to every conversion")
    ap.add_argument("--min-free-gb", type=float, default=15.0)
    ap.add_argument("--remove-checkpoint", action="store_true", help="delete the generated checkpoint at the end")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--pythonpath", help="prepended to the conversions' PYTHONPATH: time another checkout "
                    "(its core/ and plugins/*/ directories) against the same floor")
    args = ap.parse_args()
    min_free = int(args.min_free_gb * 1e9)
    work = args.dir
    ckpt = checkpoint(args.model, args.layers, work, min_free)
    files = weight_files(ckpt)
    size = sum(f.stat().st_size for f in files)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import phi_quant.quant as q

    print(f"# {ckpt.name}: {size / 1e9:.2f} GB in {len(files)} shards; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{mem / 2**30:.0f} GiB RAM; C kernel: {q.native_available()}; cache before each conversion: {args.cache}")
    if args.pythonpath:
        print(f"# conversions run the code on PYTHONPATH {args.pythonpath}")
    print(f"# load average before: {_load()}", flush=True)
    rows = floor(files, work, size < mem * 0.7, min_free)
    copy = rows["copy"]
    print("\n| step | wall s | x copy | CPU s | x copy CPU | peak RSS MiB | output GB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        _print_row(r, copy)
    results = list(rows.values())
    for backend in args.backends.split(","):
        for precision in args.precisions.split(","):
            _need_disk(work, int(size * OUTPUT_RATIO[precision]), min_free, f"{backend} {precision}")
            r = convert(ckpt, backend, precision, work, args.cache == "cold", args.threads, args.pythonpath)
            _print_row(r, copy)
            results.append(r)
    print(f"\n# load average after: {_load()}")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": ckpt.name, "bytes": size, "cache": args.cache,
                                         "rows": [dataclasses.asdict(r) for r in results]}, indent=2))
    if args.remove_checkpoint:
        shutil.rmtree(ckpt)
        print(f"# removed {ckpt} (rerun to regenerate it)")


if __name__ == "__main__":
    sys.exit(main())
