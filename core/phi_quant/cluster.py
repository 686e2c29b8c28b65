"""Run ``compare`` and ``batch`` cells as Ray tasks, on one machine or a cluster.

Each cell is the same subprocess pair a local run uses (:func:`phi_quant.compare._convert`,
:func:`phi_quant.compare._evaluate`), wrapped in a Ray task on whichever node has room:

- a conversion asks for one CPU and the memory the sizing model gives for a streaming
  conversion of that model (:func:`phi_quant.sizing.conversion_memory_bytes`), so Ray packs as
  many onto a node as it holds;
- evaluations run one at a time on one node (the one this command runs on when it is part of
  the cluster), each asking for all of that node's CPUs: tokens/s are measured on the same,
  otherwise idle, machine for every cell, as in a local run;
- outputs go to a directory every node mounts at the same path; the driver checks that each
  node sees it. A conversion writes into a temporary directory renamed into place when complete
  (:mod:`phi_quant.convert`), and its subprocess cleans up when its worker dies
  (:mod:`phi_quant.parent_watch`); the driver also sweeps what a SIGKILL leaves.

A task that crashes, is killed or runs out of memory is that cell's failure (tasks are never
retried: a retried cell would hide the crash and measure twice); Ctrl-C cancels every task and
removes their partial outputs. Ray is imported only here, and only when ``--ray`` is given.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import compare
from .compare import CELL_TIMEOUT_S, CellSpec
from .convert import sweep_partial
from .errors import BadInputError

__all__ = ["RAY_INSTALL_HINT", "RayCell", "ClusterPlan", "connect", "disconnect", "check_shared_dir",
           "portable_model", "model_config", "run_cells", "compare_on_ray"]

RAY_INSTALL_HINT = "pip install 'phi-quant[ray]'"

#: Marker file the driver writes into the shared directory; a task that cannot see it is on a
#: node that does not mount the directory.
_MARKER = ".phi-quant-shared"

#: How often the driver wakes from ``ray.wait``: a blocked wait would not see Ctrl-C.
_POLL_S = 0.5


@dataclass(frozen=True)
class RayCell:
    """One cell to run: ``spec`` of ``model`` converted into ``output`` (on the shared directory)."""

    model: str
    spec: CellSpec
    output: Path


@dataclass(frozen=True)
class ClusterPlan:
    """What the driver learnt from the cluster: where evaluations run and what a node can hold."""

    address: str
    nodes: int
    cpus: float
    max_node_memory: float
    eval_node_id: str
    eval_node_ip: str
    eval_cpus: float

    def as_meta(self, *, evaluation: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {"address": self.address, "nodes": self.nodes, "cpus": self.cpus}
        if evaluation:
            meta.update(evaluation_node=self.eval_node_ip, evaluation_cpus=self.eval_cpus)
        return meta


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInputError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


#: ``s3://``, ``gs://``, ``file://``...: a scheme before ``:/`` (a Windows drive letter is one letter).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def check_shared_dir(path: str | Path) -> Path:
    """The shared directory as an absolute path; object-store URIs are refused (not supported yet).

    Pass the user's text, not a ``Path`` of it: ``Path("s3://b")`` is ``s3:/b``, a local folder.
    """
    text = str(path)
    if _URI.match(text):
        raise BadInputError(
            f"{text}: object-store URIs are not supported yet; mount the bucket or network share at the same "
            "path on every node (s3fs, gcsfuse, NFS) and pass that directory")
    return Path(text).expanduser().absolute()


def _phi_quant_env() -> dict[str, str]:
    """The driver's PHI_QUANT_* variables (plugin allow-list, threads, caches): every task gets them."""
    return {k: v for k, v in os.environ.items() if k.startswith("PHI_QUANT_")}


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries for many minutes)."""
    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BadInputError(
            f"nothing answers at {address} ({exc.strerror or exc}); start the head there with "
            f"`ray start --head --port {port}`, or check the address `ray start` printed") from None


def connect(address: str) -> ClusterPlan:
    """Join the Ray cluster at ``address`` (``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""
    ray = import_ray()
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
    env = _phi_quant_env()
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    if address == "local":
        kwargs.update(include_dashboard=False, address=None)
        if "RAY_AUTH_MODE" not in os.environ:
            # A throwaway cluster: token auth with a token in memory. Left to itself, Ray would
            # write ~/.ray/auth_token, which turns on token auth for every later `ray start` here.
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    else:
        _check_reachable(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        auth = ("" if os.environ.get("RAY_AUTH_MODE") else
                " If the cluster uses token authentication (`ray start` turns it on when ~/.ray/auth_token "
                "exists), set RAY_AUTH_MODE=token here too.")
        raise BadInputError(
            f"cannot join the Ray cluster at {address!r}: {first}. Start one with `ray start --head` "
            f"(and `ray start --address HEAD:6379` on the other nodes), or pass --ray local.{auth}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    with_cpus = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) >= 1]
    if not with_cpus:
        raise BadInputError("the Ray cluster has no node with a CPU to run cells on")
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a Ray client driver is on no node
        here = None
    mine = [n for n in with_cpus if n["NodeID"] == here]
    node = mine[0] if mine else max(with_cpus, key=lambda n: (n["Resources"]["CPU"], n["NodeID"]))
    return ClusterPlan(
        address=address,
        nodes=len(nodes),
        cpus=sum(n.get("Resources", {}).get("CPU", 0) for n in nodes),
        max_node_memory=max(n.get("Resources", {}).get("memory", 0) for n in with_cpus),
        eval_node_id=node["NodeID"],
        eval_node_ip=node.get("NodeManagerAddress", ""),
        eval_cpus=node["Resources"]["CPU"],
    )


def disconnect() -> None:
    import_ray().shutdown()


def portable_model(model: str) -> str:
    """A local checkpoint as an absolute path (workers do not run in our directory); names unchanged."""
    path = Path(model).expanduser()
    return str(path.absolute()) if path.exists() else model


def model_config(model: str) -> Any:
    """The model's PhiConfig for sizing, read from config.json only (never the weights); None if unknown."""
    from .builtin import REAL_PREFIX, TINY_PREFIX
    from .convert import resolve_model
    from .model.config import normalize_config
    from .model.hub import looks_like_hub_id

    try:
        builtin = model.startswith((TINY_PREFIX, REAL_PREFIX))
        path = Path(resolve_model(model)) if builtin else Path(model).expanduser()
        if path.is_dir():
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        elif looks_like_hub_id(model):
            from huggingface_hub import hf_hub_download

            raw = json.loads(Path(hf_hub_download(model, "config.json")).read_text(encoding="utf-8"))
        else:
            return None
        return normalize_config(raw)
    except Exception:  # noqa: BLE001 - sizing is advice: the conversion itself reports a bad model
        return None


# -- what runs on the nodes ---------------------------------------------------------------------
def _on_node(share: str) -> str | None:
    """None when this node sees the shared directory, else the error for the cell."""
    if (Path(share) / _MARKER).is_file():
        return None
    return (f"the shared directory {share} is not visible on node {socket.gethostname()}: "
            "mount it at the same path on every node")


def _failed(spec: CellSpec, output: str | Path, error: str) -> dict[str, Any]:
    return {"backend": spec.backend, "precision": spec.precision, "recipe": spec.recipe or "rtn",
            "output_dir": str(output), "status": "failed", "error": error}


def _convert_task(model: str, spec: CellSpec, output: str, timeout: float, share: str) -> dict[str, Any]:
    problem = _on_node(share)
    if problem:
        return _failed(spec, output, f"quantize: {problem}")
    return compare._convert(model, spec, Path(output), timeout)


def _evaluate_task(cell: dict[str, Any], model: str, text: str | None, timeout: float, share: str) -> dict[str, Any]:
    problem = _on_node(share)
    if problem:
        cell.update(status="failed", error=f"eval: {problem}")
        return cell
    compare._evaluate(cell, model, text, timeout)
    return cell


# -- the driver ---------------------------------------------------------------------------------
def _task_error(ray: Any, stage: str, exc: BaseException) -> str:
    """One line for a task that died: what happened, Ray's exception and its first sentence."""
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        what = "Ray killed the task: node out of memory"
    elif isinstance(exc, ray.exceptions.TaskCancelledError):
        what = "cancelled"
    else:
        what = "the Ray task died"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{stage}: {what} ({type(exc).__name__}{': ' + first if first else ''})"


def run_cells(
    cells: Sequence[RayCell],
    plan: ClusterPlan,
    share: Path,
    *,
    jobs: int,
    evaluate: bool,
    keep: bool,
    text: str | None = None,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    timeout: float = CELL_TIMEOUT_S,
    record: Callable[[RayCell, dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell on the cluster (see module doc); results in ``cells`` order, never raises for a cell.

    ``share`` is the directory every node mounts (the cells' outputs are inside it). At most
    ``jobs`` conversions are in flight; evaluations (when ``evaluate``) run one at a time on the
    plan's evaluation node. Without ``keep``, a cell's output is deleted once it is evaluated.
    ``record`` turns a finished cell's result into what is reported (``batch`` adds the model).
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    note = on_progress or (lambda stage, cell: None)
    share.mkdir(parents=True, exist_ok=True)
    (share / _MARKER).write_text("phi-quant shared directory check\n")
    if text:  # the evaluation node may not see the driver's file: ship it on the shared directory
        shipped = Path(tempfile.mkdtemp(prefix=".phi-quant-text-", dir=share)) / Path(text).name
        shutil.copyfile(text, shipped)
        text = str(shipped)
    convert_remote = ray.remote(max_retries=0)(_convert_task)
    evaluate_remote = ray.remote(max_retries=0)(_evaluate_task).options(
        num_cpus=plan.eval_cpus,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=plan.eval_node_id, soft=False),
    )
    sizes: dict[str, int | None] = {}
    results: list[dict[str, Any] | None] = [None] * len(cells)
    waiting = list(range(len(cells)))  # not yet submitted, in order
    to_evaluate: list[int] = []  # converted, in the order they finished
    in_flight: dict[Any, tuple[int, str]] = {}  # object ref -> (cell index, "convert" | "eval")
    evaluating = False

    def memory_for(model: str) -> int | None:
        if model not in sizes:
            from .sizing import conversion_memory_bytes

            config = model_config(model)
            sizes[model] = conversion_memory_bytes(config) if config is not None else None
        return sizes[model]

    def finish(i: int, stage: str) -> None:
        if results[i]["status"] == "failed":
            sweep_partial(cells[i].output)
        if record is not None:
            results[i] = record(cells[i], results[i])
        note(stage, results[i])
        if evaluate and not keep:
            shutil.rmtree(cells[i].output, ignore_errors=True)
            results[i]["output_dir"] = None

    def converted(i: int) -> None:
        if evaluate and results[i]["status"] == "converted":
            note("converted", results[i])
            to_evaluate.append(i)
            return
        finish(i, "converted")
        if evaluate:  # a failed conversion is also its cell's evaluation step, as in a local run
            note("evaluated", results[i])

    def submit_conversion(i: int) -> None:
        c = cells[i]
        need = memory_for(c.model)
        if need is not None and need > plan.max_node_memory:
            results[i] = _failed(c.spec, c.output, f"quantize: needs ~{need / 2**30:.1f} GiB for conversion; the "
                                 f"largest Ray node offers {plan.max_node_memory / 2**30:.1f} GiB (ray start --memory)")
            converted(i)
            return
        opts: dict[str, Any] = {"num_cpus": 1}
        if need is not None:
            opts["memory"] = need
        ref = convert_remote.options(**opts).remote(c.model, c.spec, str(c.output), timeout, str(share))
        in_flight[ref] = (i, "convert")

    previous = _sigterm_interrupts()
    try:
        while waiting or in_flight or to_evaluate:
            while waiting and sum(kind == "convert" for _, kind in in_flight.values()) < jobs:
                submit_conversion(waiting.pop(0))
            if evaluate and not evaluating and to_evaluate:
                i = to_evaluate.pop(0)
                in_flight[evaluate_remote.remote(results[i], cells[i].model, text, timeout, str(share))] = (i, "eval")
                evaluating = True
            if not in_flight:
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL_S)  # lets Ctrl-C through
            if not ready:
                continue
            ref = ready[0]
            i, kind = in_flight.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayError as exc:
                stage = "quantize" if kind == "convert" else "eval"
                results[i] = dict(results[i] or _failed(cells[i].spec, cells[i].output, ""), status="failed",
                                  error=_task_error(ray, stage, exc))
            if kind == "eval":
                evaluating = False
                finish(i, "evaluated")
            else:
                converted(i)
    except BaseException:
        _cancel(ray, list(in_flight))
        for c in cells:
            sweep_partial(c.output)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        (share / _MARKER).unlink(missing_ok=True)
        if text:
            shutil.rmtree(Path(text).parent, ignore_errors=True)
    return [r for r in results if r is not None]


def _sigterm_interrupts() -> Any:
    """While the driver waits, SIGTERM acts like Ctrl-C (tasks cancelled, partial outputs removed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt()

    return signal.signal(signal.SIGTERM, interrupt)


def _cancel(ray: Any, refs: list[Any], grace: float = 20.0) -> None:
    """Cancel running tasks (their workers are killed; subprocesses clean up) and wait until they are gone."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already finished
            pass
    deadline = time.monotonic() + grace
    pending = refs
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.1, deadline - time.monotonic()))
    time.sleep(0.5)  # the subprocesses got SIGTERM with their workers; give them a moment to clean up


def compare_on_ray(
    model: str,
    specs: Sequence[CellSpec],
    address: str,
    shared: str | Path,
    *,
    jobs: int,
    keep: bool,
    text: str | None = None,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    timeout: float = CELL_TIMEOUT_S,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``compare --ray``: the cells of ``model`` on the cluster; returns the cells and the report's ``ray`` meta.

    Exports go to ``shared/models/<cell>`` with ``keep``, else to a temporary directory inside
    ``shared`` that is removed at the end (also on Ctrl-C).
    """
    share = check_shared_dir(shared)
    plan = connect(address)
    try:
        share.mkdir(parents=True, exist_ok=True)
        work = share / "models" if keep else Path(tempfile.mkdtemp(prefix=".phi-quant-cells-", dir=share))
        try:
            where = portable_model(model)
            cells = [RayCell(where, spec, work / spec.key) for spec in specs]
            results = run_cells(cells, plan, share, jobs=jobs, evaluate=True, keep=keep, text=text,
                                on_progress=on_progress, timeout=timeout)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        disconnect()
    return results, plan.as_meta()
