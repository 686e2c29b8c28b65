"""compare/batch on a real Ray cluster: a local head started with `ray start --head` for this module.

Every run is the real command in a subprocess (`python -m phi_quant.cli ... --ray ADDRESS`),
against a head with 2 CPUs, its own temp dir and no dashboard, torn down at the end even when a
test fails. The matrix is 2 backends × 2 precisions of a tiny model (reference and llamacpp:
the two cheapest to convert and evaluate).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")

from phi_quant.manifest import MANIFEST_NAME  # noqa: E402
from phi_quant.plugins import get_manager  # noqa: E402

BACKENDS = ("reference", "llamacpp")
PRECISIONS = ("fp32", "int4")
MATRIX = [a for b in BACKENDS for a in ("--backend", b)] + [a for p in PRECISIONS for a in ("--precision", p)]
#: Measured, not computed: they differ between any two runs, local or not.
TIMING = {"convert_seconds", "load_seconds", "prompt_tokens_per_s", "gen_tokens_per_s", "peak_rss_bytes", "wall_seconds"}

pytestmark = pytest.mark.skipif(not set(BACKENDS) <= set(get_manager().names()),
                                reason="needs the reference and llamacpp backends")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(leader: int) -> list[psutil.Process]:
    """Every process of the head's session (raylet, GCS, ...) and their descendants (workers, cells)."""
    procs = {}
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == leader:
                procs[p.pid] = p
                for c in p.children(recursive=True):
                    procs[c.pid] = c
        except (psutil.Error, ProcessLookupError):
            pass
    return list(procs.values())


@pytest.fixture(scope="module")
def ray_head():
    """``HOST:PORT`` of a fresh local Ray head; everything it started is killed afterwards.

    Token authentication with a token of its own, in the environment of the head and of every
    driver this module starts: nothing depends on (or writes) ~/.ray/auth_token.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_ADDRESS", raising=False)
        yield from _start_head()


def _start_head():
    tmp = Path(tempfile.mkdtemp(prefix="pq-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-port", str(_free_port()),
           "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory", str(100 * 2**20),
           "--temp-dir", str(tmp)]
    log = open(tmp / "start.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(180)
        log.seek(0)
        assert rc == 0, log.read()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        procs = _tree(proc.pid)
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        log.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "phi_quant.cli", *args]


def _run(args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


# Runs `compare` locally in this interpreter, then proves Ray was never imported.
_LOCAL = """
import sys
from phi_quant.cli import cli
cli.main(sys.argv[1:], standalone_mode=False)
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.") or m == "phi_quant.cluster")
print("RAY-MODULES", loaded, file=sys.stderr)
"""


def _rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]


def test_ray_report_equals_the_local_run(ray_head, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    # Both at once: only measured fields could feel the contention, and they are not compared.
    on_ray = subprocess.Popen(_cli("compare", "tiny:phi3-mini", *MATRIX, "-o", str(remote), "--ray", ray_head, "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        res = _run([sys.executable, "-c", _LOCAL, "compare", "tiny:phi3-mini", *MATRIX, "-o", str(local), "--json"])
        out, err = on_ray.communicate(timeout=300)
    finally:
        if on_ray.poll() is None:
            on_ray.kill()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RAY-MODULES []" in res.stderr  # without --ray, Ray is not imported
    assert on_ray.returncode == 0, err[-3000:]
    assert json.loads(out)["meta"]["ray"]["nodes"] == 1  # stdout is the JSON alone

    a, b = (json.loads((d / "report.json").read_text()) for d in (local, remote))
    ray_meta = b["meta"].pop("ray")
    assert ray_meta["evaluation_cpus"] == 2 and ray_meta["address"] == ray_head
    for meta in (a["meta"], b["meta"]):
        meta.pop("wall_seconds")
        meta.pop("load_average")  # measured: the two runs read it at different instants
    assert a["meta"] == b["meta"] and a["columns"] == b["columns"]
    assert [(c["backend"], c["precision"]) for c in a["cells"]] == [(c["backend"], c["precision"]) for c in b["cells"]]
    for x, y in zip(a["cells"], b["cells"]):
        assert x["status"] == "ok" and set(x) == set(y), (x, y)
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}
        assert all(y[k] > 0 for k in TIMING & set(y))
        assert 0.8 < y["peak_rss_bytes"] / x["peak_rss_bytes"] < 1.25  # the evaluating process's own peak
    # report.md: the same table, timing columns aside; and the picture.
    timing_columns = {"prompt tok/s", "gen tok/s", "load (s)", "convert (s)", "run RSS (MiB)"}
    ta, tb = (_rows((d / "report.md").read_text()) for d in (local, remote))
    keep = [i for i, h in enumerate(ta[0]) if h not in timing_columns]
    assert [[r[i] for i in keep] for r in ta] == [[r[i] for i in keep] for r in tb]
    assert (remote / "report.png").stat().st_size > 0
    assert not list(remote.glob(".*")), "the temporary exports and the shared-dir marker are removed"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"driver exited first: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return json.loads(path.read_text())


def _gone(pid: int, timeout: float = 20) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")]


def test_killed_worker_and_killed_conversion_are_failed_cells(ray_head, tmp_path):
    """Two cells are stopped mid-conversion: one's Ray worker is SIGKILLed (its quantize subprocess
    must die with it and clean up), the other's quantize process is SIGKILLed like the OOM killer
    does (the cell runner sweeps its partial directory). Both fail; the other two pass."""
    hold, share, report = tmp_path / "hold", tmp_path / "share", tmp_path / "report"
    hold.mkdir()
    for key in ("reference-fp32", "reference-int4"):
        (hold / f"{key}.hold").touch()
    env = dict(os.environ, PHI_QUANT_TEST_HOLD_DIR=str(hold))  # the driver forwards PHI_QUANT_* to the tasks
    driver = subprocess.Popen(_cli("compare", "tiny:phi3-mini", *MATRIX, "-o", str(report), "--keep",
                                   "--shared-dir", str(share), "--ray", ray_head, "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        worker_cell = _wait_for(hold / "reference-fp32.held", driver)
        oom_cell = _wait_for(hold / "reference-int4.held", driver)
        for cell in (worker_cell, oom_cell):  # really mid-way: a partial directory with tensors in it
            partial = list(Path(cell["output"]).parent.glob(f".{Path(cell['output']).name}.partial-*"))
            assert len(partial) == 1 and any(partial[0].rglob("*.safetensors")), partial
        os.kill(worker_cell["ppid"], signal.SIGKILL)  # the Ray worker running reference-fp32
        os.kill(oom_cell["pid"], signal.SIGKILL)  # the quantize subprocess of reference-int4
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert _gone(worker_cell["pid"]), "the quantize subprocess outlived its killed worker"
    cells = {(c["backend"], c["precision"]): c for c in json.loads((report / "report.json").read_text())["cells"]}
    assert "WorkerCrashedError" in cells["reference", "fp32"]["error"] and cells["reference", "fp32"]["status"] == "failed"
    assert "killed by SIGKILL" in cells["reference", "int4"]["error"] and cells["reference", "int4"]["status"] == "failed"
    for key in (("llamacpp", "fp32"), ("llamacpp", "int4")):
        assert cells[key]["status"] == "ok" and cells[key]["kl_mean"] is not None
        assert (share / "models" / "-".join(key) / MANIFEST_NAME).is_file()
    assert not (share / "models" / "reference-fp32").exists() and not (share / "models" / "reference-int4").exists()
    assert _leftovers(share) == [] and not (share / ".phi-quant-shared").exists()


def test_ctrl_c_cancels_the_batch_and_leaves_no_partial_output(ray_head, tmp_path):
    hold, zoo = tmp_path / "hold", tmp_path / "zoo"
    hold.mkdir()
    (hold / "reference-int4.hold").touch()
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"output: {zoo}\nmodels: [tiny:phi3-mini]\nbackends: [reference]\nprecisions: [fp32, int4]\n")
    env = dict(os.environ, PHI_QUANT_TEST_HOLD_DIR=str(hold))
    driver = subprocess.Popen(_cli("batch", str(matrix), "--ray", ray_head), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        held = _wait_for(hold / "reference-int4.held", driver)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1 and "interrupted (Ctrl-C)" in err and "Traceback" not in err, err[-3000:]
    assert _gone(held["pid"]), "the cancelled conversion is still running"
    assert _leftovers(zoo) == [] and not (zoo / "batch.json").exists()
    assert not (zoo / "tiny-phi3-mini" / "reference-int4").exists()
    done = zoo / "tiny-phi3-mini" / "reference-fp32"  # finished before Ctrl-C, or cancelled: never half
    assert not done.exists() or (done / "README.md").is_file()
