"""An author follows docs/plugin-authoring.md outside the repository and gets a working plugin.

The guide's "Start your own backend" shell block is run as written, in a temporary directory
with a fresh virtual environment on PATH (``pip`` and ``phi-quant`` are that environment's).
The environment sees the already-installed core and its dependencies, as
``--system-site-packages`` would (a nested venv needs a ``.pth`` for that), so nothing is
downloaded. Then ``phi-quant plugins --json`` must list the new backend under its new
distribution, and the new backend must quantize and run a tiny model.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugin-authoring.md"


def guide_commands() -> str:
    """The shell block of the guide's "Start your own backend" section."""
    text = GUIDE.read_text()
    section = re.search(r"^## Start your own backend\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "docs/plugin-authoring.md needs a '## Start your own backend' section"
    block = re.search(r"```sh\n(.*?)```", section.group(1), flags=re.S)
    assert block, "the 'Start your own backend' section needs a ```sh block"
    return block.group(1)


def make_venv(path: Path) -> Path:
    """A venv whose ``pip``/``phi-quant`` see this interpreter's packages but install into the venv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_outer_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    for tool, module in (("pip", "pip"), ("phi-quant", "phi_quant.cli")):
        script = path / "bin" / tool
        script.write_text(f'#!/bin/sh\nexec "{path / "bin" / "python"}" -m {module} "$@"\n')
        script.chmod(0o755)
    return path


def test_guide_builds_an_installable_plugin_outside_the_repo(tmp_path):
    assert not tmp_path.resolve().is_relative_to(ROOT)
    venv = make_venv(tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    (work / "phi-quant").symlink_to(ROOT)  # the guide starts from a checkout of phi-quant
    # Offline: no index, and no isolated build env (pip reads PIP_NO_BUILD_ISOLATION=0 as "don't isolate").
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PIP_NO_INDEX": "1",
           "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", guide_commands()], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (venv / "bin" / "python").exists() and list(venv.glob("lib/python*/site-packages/phi_quant_hello/plugin.py"))

    listing = subprocess.run(["phi-quant", "plugins", "--json"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    backends = {b["name"]: b for b in json.loads(listing.stdout)["backends"]}
    assert backends["hello"]["distribution"] == "phi-quant-hello"
    assert {p["precision"] for p in backends["hello"]["precisions"]} == {"fp32", "fp16", "bf16", "int8", "int4"}

    out = work / "hello-int4"
    quantized = subprocess.run(["phi-quant", "quantize", "tiny:phi3-mini", "-b", "hello", "-p", "int4", "-o", str(out),
                                "--quiet"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert quantized.returncode == 0, quantized.stderr
    manifest = json.loads((out / "phi-quant.json").read_text())
    assert manifest["backend"]["name"] == "hello" and manifest["backend"]["distribution"] == "phi-quant-hello"
    ran = subprocess.run(["phi-quant", "run", str(out), "--prompt", "Hello", "--max-tokens", "4"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
