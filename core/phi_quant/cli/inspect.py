"""``phi-quant inspect MODEL``: what the checkpoint is and what each precision would cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import PhiQuantError
from ..plugins import get_manager
from ..sizing import bits_per_weight, weight_bytes
from ._common import emit_json, fmt_bytes, json_option, table

__all__ = ["command", "describe_model"]

#: (precision, group size) rows of the size estimate; scales are fp16, one per group.
SIZE_ROWS = (("fp32", None), ("fp16", None), ("int8", 32), ("int4", 32), ("int4", 128))


def _about(source: Any, model: str | None) -> dict[str, Any] | None:
    """What a built-in model is: its checkpoint's provenance file, else the registry's one line."""
    from ..builtin import PROVENANCE_FILE, lookup

    f = Path(source.path) / PROVENANCE_FILE
    if f.is_file():
        return json.loads(f.read_text(encoding="utf-8"))
    found = lookup(model) if model else None
    return {"name": found.name, "summary": found.summary} if found else None


def describe_model(source: Any, model: str | None = None) -> dict[str, Any]:
    """Everything ``inspect`` shows, JSON-ready (``model``: the name the user gave, for built-in models)."""
    cfg = source.config
    rope = cfg.rope
    sizes = [
        {"precision": p, "group_size": g, "bits_per_weight": round(bits_per_weight(p, g), 3),
         "weights_bytes": weight_bytes(cfg, p, g), "active_weights_bytes": weight_bytes(cfg, p, g, active=True)}
        for p, g in SIZE_ROWS
    ]
    support: dict[str, Any] = {}
    writers: dict[str, list[str]] = {}
    for b in get_manager().backends():
        writers[b.name] = list(b.info.architectures)
        if not b.info.writes(cfg.arch_name):
            support[b.name] = {"error": f"does not write {cfg.arch_name} (writes {', '.join(b.info.architectures)})"}
            continue
        try:
            support[b.name] = {p.precision: p.scheme for p in b.precisions()}
        except PhiQuantError as exc:
            support[b.name] = {"error": str(exc)}
    return {
        "path": str(source.path),
        "about": _about(source, model),
        "family": cfg.family,
        "architecture": cfg.architecture,
        "arch": cfg.arch_name,
        "parameters": cfg.parameter_count(),
        "active_parameters": cfg.active_parameter_count(),
        "dims": {
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "num_experts": cfg.num_experts,
            "experts_per_token": cfg.experts_per_token,
        },
        "rope": {
            "theta": rope.theta,
            "rotary_dim": rope.rotary_dim,
            "scaling": rope.scaling,
            "original_max_position": rope.original_max_position,
            "attention_factor": rope.attention_factor,
        },
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "stored_dtype": cfg.torch_dtype,
        "quirks": cfg.quirks(),
        "estimated_sizes": sizes,
        "backends": support,
        "backend_architectures": writers,
    }


@click.command("inspect")
@click.argument("model")
@json_option
def command(model: str, as_json: bool) -> None:
    """Describe MODEL (local directory, hub id or tiny:<variant>): shape, quirks, sizes, backends."""
    from ..convert import open_source

    with open_source(model) as src:
        data = describe_model(src, model)
    if as_json:
        emit_json(data)
        return
    d, r = data["dims"], data["rope"]
    click.echo(f"Model       {model}")
    about = data["about"]
    if about:
        click.echo(f"About       {about['summary']}")
        origin = about.get("source")
        if origin:
            click.echo(f"Built from  {origin['file']} of {origin['distribution']} {origin['version']} "
                       f"(sha256 {origin['sha256'][:12]}, license {origin.get('license')}), cached at {data['path']}")
    click.echo(f"Family      {data['family']} ({data['architecture']}, architecture {data['arch']}, "
               f"stored as {data['stored_dtype']})")
    active = data["active_parameters"]
    click.echo(f"Parameters  {data['parameters']:,}"
               + (f" ({active:,} active per token)" if active != data["parameters"] else ""))
    click.echo(f"Dims        hidden {d['hidden_size']}, layers {d['num_layers']}, heads {d['num_heads']}/{d['num_kv_heads']} "
               f"(head_dim {d['head_dim']}), ffn {d['intermediate_size']}, vocab {d['vocab_size']}, "
               f"context {d['max_position_embeddings']}"
               + (f", {d['num_experts']} experts ({d['experts_per_token']} per token)" if d["num_experts"] else ""))
    click.echo(f"RoPE        theta {r['theta']:g}, {r['rotary_dim']} rotary dims"
               + (f", {r['scaling']} (original context {r['original_max_position']})" if r["scaling"] else ""))
    click.echo("Quirks")
    for q in data["quirks"]:
        click.echo(f"  - {q}")
    moe = bool(d["num_experts"])
    click.echo("\nEstimated weight size (fp16 scales included)"
               + (": memory holds every expert; each token reads only the active ones" if moe else "") + ":")
    click.echo(table(
        ["precision", "group", "bits/weight", "size"] + (["read per token"] if moe else []),
        [(s["precision"], s["group_size"] or "-", f"{s['bits_per_weight']:.3f}", fmt_bytes(s["weights_bytes"]))
         + ((fmt_bytes(s["active_weights_bytes"]),) if moe else ()) for s in data["estimated_sizes"]],
    ))
    click.echo("\nInstalled backends:")
    if not data["backends"]:
        click.echo("  none (pip install phi-quant-llamacpp, phi-quant-onnx, phi-quant-openvino or phi-quant-mlx)")
    for name, offers in data["backends"].items():
        text = offers.get("error") or ", ".join(f"{p} ({s})" for p, s in offers.items())
        click.echo(f"  {name:<10} {text}")
