"""A conversion killed outright (SIGKILL, no cleanup possible) leaves nothing at the destination.

Uses the kit's cached ~1.1 GB checkpoint (shared with the conformance kit's streaming check),
large enough that the process can be killed while the GGUF is half written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow


def test_killed_conversion_leaves_nothing_at_the_destination(tmp_path):
    from phi_quant.testing.kit_streaming import large_checkpoint

    checkpoint = large_checkpoint()
    dest = tmp_path / "dest"
    code = textwrap.dedent(
        f"""
        from phi_quant.convert import convert
        from phi_quant.types import ExportOptions
        convert({str(checkpoint)!r}, "llamacpp", ExportOptions(precision="int4"), {str(dest)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    partial = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # wait until the GGUF is half written
            partial = [p for p in tmp_path.glob(".dest.partial-*/*.gguf") if p.stat().st_size > 100 * 2**20]
            if partial:
                break
            time.sleep(0.1)
        assert proc.poll() is None and partial, "conversion ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not dest.exists()
