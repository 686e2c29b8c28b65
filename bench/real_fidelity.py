"""Fidelity of every backend, precision and named scheme on the real model, each in its vendor runtime.

    python bench/real_fidelity.py                       # every cell below, then the tables
    python bench/real_fidelity.py --backend mlx         # one backend's cells
    python bench/real_fidelity.py --cell onnx-int4 --cell onnx-int4-asym-b32   # cells by key
    python bench/real_fidelity.py --tables OUT/report.json [MORE/report.json ...]   # the tables again

Each cell is what a user runs by hand: ``phi-quant quantize real:smollm2 ... --json`` then
``phi-quant eval OUT --reference real:smollm2 --json`` in their own processes (through
:func:`phi_quant.compare.run_matrix`, so a cell that fails is reported and the rest go on). eval
scores perplexity on the first 2048 tokens of the evaluation text in 512-token windows, measures
KL(oracle‖export) and top-1 agreement at each of those positions, and answers five short chat
questions greedily (32 new tokens) in the vendor runtime and in the fp32 oracle. The oracle's
results come from phi-quant's oracle cache, so the numpy oracle runs once for the whole table.

Writes OUT/report.json (+ report.md and report.png, as ``compare`` does) and OUT/fidelity.md after
each cell, so an interrupted run keeps what it finished (``--tables`` joins the reports of
several runs, e.g. one per ``--backend``). fidelity.md holds the table for docs/fidelity.md (one
row per cell, a ``recipe`` column so recipe rows can be added) and each backend's rows for its
page. Prints the load average before and after: the two cores here are shared, so tokens/s are
not the point of this bench (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from phi_quant import __version__
from phi_quant.compare import CellSpec, run_matrix
from phi_quant.report import text_record, write_report

MODEL = "real:smollm2"


def _c(backend: str, precision: str, label: str = "", *args: str) -> CellSpec:
    return CellSpec(backend, precision, tuple(args), label)


#: Every backend × precision and every named scheme, in table order. ``label`` names the scheme
#: when it is not the precision's default.
CELLS: tuple[CellSpec, ...] = (
    # llama.cpp: F32/F16/BF16, Q8_0 and its two K-quant neighbours, the three 4-bit schemes.
    _c("llamacpp", "fp32"), _c("llamacpp", "fp16"), _c("llamacpp", "bf16"),
    _c("llamacpp", "int8"),
    _c("llamacpp", "int8", "Q6_K", "--scheme", "Q6_K"),
    _c("llamacpp", "int8", "Q5_K_M", "--scheme", "Q5_K_M"),
    _c("llamacpp", "int4", "Q4_K_M", "--scheme", "Q4_K_M"),
    _c("llamacpp", "int4", "Q4_1", "--scheme", "Q4_1"),
    _c("llamacpp", "int4"),
    # ONNX Runtime GenAI: MatMulNBits symmetric (default) and asymmetric, blocks 32 (default) / 64 / 128.
    _c("onnx", "fp32"), _c("onnx", "fp16"),
    _c("onnx", "int8"),
    _c("onnx", "int8", "asym-b32", "--asymmetric"),
    _c("onnx", "int4"),
    _c("onnx", "int4", "sym-b64", "--group-size", "64"),
    _c("onnx", "int4", "sym-b128", "--group-size", "128"),
    _c("onnx", "int4", "asym-b32", "--asymmetric"),
    _c("onnx", "int4", "asym-b64", "--asymmetric", "--group-size", "64"),
    _c("onnx", "int4", "asym-b128", "--asymmetric", "--group-size", "128"),
    # OpenVINO: NNCF INT8_ASYM (default) / INT8_SYM per channel; INT4 asym (default) / sym, groups 128 / 64 / 32.
    _c("openvino", "fp32"), _c("openvino", "fp16"),
    _c("openvino", "int8"),
    _c("openvino", "int8", "sym-cw", "--symmetric"),
    _c("openvino", "int4"),
    _c("openvino", "int4", "asym-g64", "--group-size", "64"),
    _c("openvino", "int4", "asym-g32", "--group-size", "32"),
    _c("openvino", "int4", "sym-g128", "--symmetric"),
    _c("openvino", "int4", "sym-g64", "--symmetric", "--group-size", "64"),
    _c("openvino", "int4", "sym-g32", "--symmetric", "--group-size", "32"),
    # MLX: float32/16, bfloat16, affine 8-bit group 64 (default), affine 4-bit groups 32 / 64 (default) / 128.
    # The int cells keep scales, biases and activations in float32 (``dtype=float32``): mlx's CPU
    # quantized matmul runs at ~0.2 GFLOP/s in bfloat16 and ~0.04 in float16 against ~1.2 in float32
    # (bench note in docs/backends/mlx.md), so a default-dtype cell would take ~40 min here. The
    # default's extra error (bfloat16 scales) is measured on the test window instead.
    _c("mlx", "fp32"), _c("mlx", "fp16"), _c("mlx", "bf16"),
    _c("mlx", "int8", "f32-scales", "--option", "dtype=float32"),
    _c("mlx", "int4", "g32-f32-scales", "--group-size", "32", "--option", "dtype=float32"),
    _c("mlx", "int4", "f32-scales", "--option", "dtype=float32"),
    _c("mlx", "int4", "g128-f32-scales", "--group-size", "128", "--option", "dtype=float32"),
    # The reference backend: the kernel's blocks run by the oracle itself (weight rounding alone).
    _c("reference", "fp32"), _c("reference", "fp16"), _c("reference", "bf16"),
    _c("reference", "int8"), _c("reference", "int4"),
)

_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3, "int4": 4}


def _num(value, fmt: str) -> str:
    if value is None:
        return "–"
    return format(value, fmt)


def fidelity_rows(cells: list[dict]) -> list[str]:
    """Markdown rows, one per cell (failed cells say why)."""
    rows = []
    for c in cells:
        scheme = c.get("scheme") or c.get("label") or "–"
        if c.get("label") and "scales" in c["label"]:  # the scheme's name does not say the scales' dtype
            scheme += ", " + c["label"].rsplit("-", 2)[-2] + " scales"
        head = f"| {c['backend']} | {c['precision']} | {scheme} | {c.get('recipe') or 'rtn'} |"
        if c.get("status") != "ok":
            rows.append(head + f" failed: {str(c.get('error', ''))[:100]} |" + " |" * 7)
            continue
        rows.append(
            head
            + f" {c['size_bytes'] / 1024**2:.1f} | {_num(c.get('perplexity'), '.3f')} | {_num(c.get('ppl_delta'), '+.3f')} |"
            + f" {_num(c.get('text_kl_mean'), '.3g')} | {_num(c.get('text_kl_max'), '.3g')} |"
            + f" {100 * c['text_top1_agreement']:.1f}% | {c.get('answers_agree', '–')} | {_num(c.get('kl_mean'), '.3g')} |"
        )
    return rows


HEADER = ("| backend | precision | scheme | recipe | size MiB | ppl | Δppl | KL mean | KL max | top-1 | answers | KL prompts |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def differing_answers(cells: list[dict]) -> list[str]:
    """Each answer that differs from the oracle's, as a Markdown list item."""
    out = []
    for c in cells:
        for item in c.get("answers") or []:
            if not item["same"]:
                out.append(f"- {c['backend']} {c.get('scheme') or c['precision']}: {item['question']} → {item['model']!r}")
    return out


def tables(report: dict) -> str:
    cells = sorted(report["cells"], key=lambda c: (c["backend"], _PRECISION_ORDER.get(c["precision"], 9)))
    meta = report["meta"]
    oracle = next((c.get("reference_perplexity") for c in cells if c.get("reference_perplexity")), None)
    answers = next((c.get("answers") for c in cells if c.get("answers")), None) or []
    lines = [f"fp32 oracle perplexity {oracle:.3f}" if oracle else "no oracle perplexity", "",
             f"text: {meta.get('text', '?')}", f"command: {meta.get('command')}",
             f"load average before/after: {meta.get('load_before')} / {meta.get('load_after')}; "
             f"wall {meta.get('wall_seconds')} s; phi-quant {meta.get('phi_quant_version')}", "",
             "oracle answers:"]
    lines += [f"- {a['question']} → {a['oracle']!r}" for a in answers]
    lines += ["", "## all cells", "", HEADER, *fidelity_rows(cells), "", "## answers that differ from the oracle's", "",
              *(differing_answers(cells) or ["(none)"])]
    for backend in sorted({c["backend"] for c in cells}):
        lines += ["", f"## {backend}", "", HEADER, *fidelity_rows([c for c in cells if c["backend"] == backend])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", action="append", help="only this backend's cells (repeatable)")
    ap.add_argument("--cell", action="append", metavar="KEY",
                    help="only this cell, by key: backend-precision[-label], e.g. onnx-int4-asym-b32 (repeatable)")
    ap.add_argument("-o", "--output", type=Path, default=Path(tempfile.gettempdir()) / "phi-quant-real-fidelity")
    ap.add_argument("--jobs", type=int, default=1, help="conversions at once (evaluations always run one at a time)")
    ap.add_argument("--max-text-tokens", type=int,
                    help="tokens of the evaluation text each cell scores (default: eval's, 2048 in 512-token windows)")
    ap.add_argument("--tables", type=Path, nargs="+", metavar="REPORT_JSON",
                    help="only print the tables of finished runs (their cells joined, the first run's header)")
    args = ap.parse_args(argv)
    if args.tables:
        reports = [json.loads(p.read_text()) for p in args.tables]
        joined = {"meta": reports[0]["meta"], "cells": [c for r in reports for c in r["cells"]]}
        if len(reports) > 1:
            joined["meta"] = dict(joined["meta"], command="; ".join(r["meta"].get("command", "?") for r in reports),
                                  load_before=" | ".join(str(r["meta"].get("load_before")) for r in reports),
                                  load_after=" | ".join(str(r["meta"].get("load_after")) for r in reports),
                                  wall_seconds=sum(r["meta"].get("wall_seconds") or 0 for r in reports))
        sys.stdout.write(tables(joined))
        return 0
    cells = [c for c in CELLS if (not args.backend or c.backend in args.backend) and (not args.cell or c.key in args.cell)]
    if args.cell:  # in the order asked for, so the cells that matter most can come first
        cells.sort(key=lambda c: args.cell.index(c.key))
    unknown = sorted(set(args.cell or ()) - {c.key for c in CELLS})
    if unknown or not cells:
        ap.error(f"no such cell: {', '.join(unknown) or 'none selected'} (keys: {', '.join(c.key for c in CELLS)})")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()

    def progress(stage: str, cell: dict) -> None:
        what = cell.get("status")
        extra = f" {cell.get('error')}" if what == "failed" else (
            f" ppl {cell.get('perplexity', 0):.3f} KL {cell.get('text_kl_mean', 0):.3g} answers {cell.get('answers_agree')}"
            if what == "ok" else "")
        print(f"[{time.perf_counter() - t0:7.0f} s] {stage} {cell['backend']} {cell['precision']} "
              f"{cell.get('label', '')}: {what}{extra}", file=sys.stderr, flush=True)

    eval_args = ("--max-text-tokens", str(args.max_text_tokens)) if args.max_text_tokens else ()
    work = Path(tempfile.mkdtemp(prefix="real-fidelity-", dir=args.output.parent))
    results: list[dict] = []

    def write() -> None:
        cells_so_far = results + done
        meta = {
            "model": MODEL,
            "command": "python bench/real_fidelity.py" + "".join(f" --backend {b}" for b in args.backend or ())
            + "".join(f" --cell {k}" for k in args.cell or ())
            + (f" --max-text-tokens {args.max_text_tokens}" if args.max_text_tokens else ""),
            "phi_quant_version": __version__,
            "cells": len(cells_so_far),
            "failed": sum(1 for c in cells_so_far if c.get("status") != "ok"),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "text": text_record(cells_so_far),
        }
        write_report(args.output, cells_so_far, meta)
        report = json.loads((args.output / "report.json").read_text())
        (args.output / "fidelity.md").write_text(tables(report))

    def progress_and_write(stage: str, cell: dict) -> None:
        progress(stage, cell)
        if stage == "evaluated":  # the report so far, so an interrupted run keeps every finished cell
            done.append(cell)
            write()

    done: list[dict] = []
    try:
        # Consecutive cells of one backend at a time: run_matrix converts all of them before
        # evaluating them, and forty exports of the model at once would hold ~8 GB of disk.
        for backend, group in itertools.groupby(cells, key=lambda c: c.backend):
            results += run_matrix(MODEL, list(group), work / backend, jobs=args.jobs,
                                  on_progress=progress_and_write, eval_args=eval_args)
            done.clear()
            write()
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write((args.output / "fidelity.md").read_text())
    print(f"\nwritten: {args.output}/report.json, fidelity.md, report.md, report.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
