"""``phi-quant run OUT --prompt ...``: generate text with an exported model in its vendor runtime."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..manifest import read_manifest
from ..options import check_runtime_options
from ..plugins import get_manager
from ..verify import require_intact
from ._common import emit_json, json_option

__all__ = ["command", "open_output"]


def open_output(path: Path, *, context_length: int | None = None, threads: int | None = None, full_check: bool = False):
    """Load an output directory with the backend named in its manifest; returns (backend, model, manifest).

    The files are first compared with the manifest's record: sizes, or sha256 too with ``full_check``.
    """
    check_runtime_options(context_length=context_length, threads=threads)
    manifest = read_manifest(path)
    require_intact(Path(path), manifest, full=full_check)
    backend = get_manager().get(manifest["backend"]["name"])
    options = {k: v for k, v in {"context_length": context_length, "threads": threads}.items() if v is not None}
    return backend, backend.load_model(Path(path), options), manifest


@click.command("run")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Text to continue (or the user message with --chat).")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Tokens to generate.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--context-length", type=int, help="Context to load the model with.")
@click.option("--threads", type=int, help="Runtime threads.")
@json_option
def command(output, prompt, max_tokens, chat, context_length, threads, as_json) -> None:
    """Generate from OUT (a directory written by `phi-quant quantize`), greedily."""
    check_runtime_options(max_tokens=max_tokens)
    t0 = time.perf_counter()
    backend, model, manifest = open_output(output, context_length=context_length, threads=threads)
    t_load = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        text = model.generate(prompt, max_new_tokens=max_tokens, chat=chat)
        t_gen = time.perf_counter() - t1
    finally:
        model.close()
    if as_json:
        emit_json({"backend": backend.name, "precision": manifest.get("precision"), "prompt": prompt,
                   "output": text, "load_seconds": t_load, "generate_seconds": t_gen})
        return
    click.echo(text)
