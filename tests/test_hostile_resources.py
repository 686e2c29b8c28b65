"""Class 5 of issue 18: resource failures are one line, exit 1 or 2, and leave nothing behind.

A full disk (a small tmpfs mounted for the test: root only, skipped otherwise) while the backend
writes, while the core writes the model card and while it writes the manifest; a file-size limit
(``ulimit -f``) while the core writes the manifest; a read-only or impossible ``-o``; a 250-character output name (legal, and it
works) and a 300-character one (refused up front); parent directories created for ``-o`` removed
again when the conversion fails; running out of memory inside a backend.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi_quant.cli import cli
from phi_quant.hookspecs import hookimpl
from phi_quant.testing.factory import cached_checkpoint
from phi_quant.types import BackendInfo, PrecisionSpec


@pytest.fixture(scope="module", autouse=True)
def _tiny_built():
    """Build the tiny checkpoint here, not inside a subprocess that runs under a file-size limit."""
    cached_checkpoint("phi3-mini")


def _mount(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs: far less than any tiny model's output."""
    fs = tmp_path / "fs"
    _mount(fs, "size=1m")
    try:
        yield fs
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_disk_full_while_the_backend_writes(cli_process, small_fs, one_line_error):
    res = cli_process.run("quantize", "tiny:phi3-mini", "-b", "reference", "-p", "fp32", "-o", small_fs / "new" / "out")
    one_line_error(res, 1, "backend 'reference' export failed: No space left on device", "free some disk space")
    assert list(small_fs.iterdir()) == [], "temporary directory and the created parent are removed"


def test_disk_full_while_the_core_writes_the_model_card(cli_process, small_fs, testplug_site, one_line_error):
    res = cli_process.run("quantize", "tiny:phi3-mini", "-b", "testplug", "-p", "fp32", "-o", small_fs / "out",
                          plugins="testplug", site=[testplug_site], extra={"TESTPLUG_FILL": "1"})
    one_line_error(res, 1, "writing README.md of the output failed: No space left on device")
    assert list(small_fs.iterdir()) == []


def test_disk_full_while_the_core_writes_the_manifest(cli_process, small_fs, testplug_site, one_line_error):
    """Room is left for the model card (written first, ~2 KB) but not for a 200 KB manifest."""
    res = cli_process.run("quantize", "tiny:phi3-mini", "-b", "testplug", "-p", "fp32", "-o", small_fs / "out",
                          plugins="testplug", site=[testplug_site],
                          extra={"TESTPLUG_FILL": "1", "TESTPLUG_FILL_LEAVE": "16384", "TESTPLUG_DETAILS_BYTES": "200000"})
    one_line_error(res, 1, "writing phi-quant.json of the output failed: No space left on device")
    assert list(small_fs.iterdir()) == []


def test_file_size_limit_while_the_core_writes_the_manifest(cli_process, tmp_path, testplug_site, one_line_error):
    res = cli_process.run("quantize", "tiny:phi3-mini", "-b", "testplug", "-p", "fp32", "-o", tmp_path / "out",
                          plugins="testplug", site=[testplug_site], extra={"TESTPLUG_DETAILS_BYTES": "300000"},
                          limits={resource.RLIMIT_FSIZE: 128 * 1024})
    one_line_error(res, 1, "writing phi-quant.json of the output failed: File too large", "ulimit -f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_output_on_a_read_only_file_system(manager, npy_backend, tmp_path, one_line_error):
    ro = tmp_path / "ro"
    if os.geteuid() == 0:
        _mount(ro, "size=1m,ro")
    else:
        ro.mkdir()
        ro.chmod(0o555)
    try:
        res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "npy", "-p", "fp32", "-o", str(ro / "a" / "out")])
        one_line_error(res, 2, f"creating {ro / 'a'} for -o", "choose another -o")
        assert list(ro.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)


def test_output_below_a_regular_file(manager, npy_backend, tmp_path, one_line_error):
    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "npy", "-p", "fp32",
                                   "-o", str(tmp_path / "notes.txt" / "sub" / "out")])
    one_line_error(res, 2, "notes.txt is a file, not a directory")
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_250_character_name_works_and_a_300_character_one_is_refused(manager, npy_backend, tmp_path, one_line_error):
    fine = tmp_path / ("q" * 250)
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "npy", "-p", "fp32", "-o", str(fine), "-q"])
    assert res.exit_code == 0, res.output
    assert (fine / "phi-quant.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [fine.name]
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "npy", "-p", "fp32", "-o", str(tmp_path / ("r" * 300))])
    one_line_error(res, 2, "is 300 bytes; file systems allow 255")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fine.name]


def test_parents_created_for_the_output_are_removed_on_failure(manager, fakes, tmp_path, one_line_error):
    manager.register(fakes["NpyBackend"]("broken", fail_after=2), "broken")
    (tmp_path / "kept").mkdir()
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "broken", "-p", "fp32",
                                   "-o", str(tmp_path / "kept" / "a" / "b" / "out")])
    one_line_error(res, 1, "injected failure")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and list((tmp_path / "kept").iterdir()) == []


class _OutOfMemory:
    """A backend whose export runs out of memory (as a vendor library would on a huge allocation)."""

    @hookimpl
    def backend_info(self):
        return BackendInfo(name="oom", format="none", runtime="none")

    @hookimpl
    def supported_precisions(self):
        return [PrecisionSpec("fp32", "none")]

    @hookimpl
    def export(self, source, output_dir, options, progress):
        (Path(output_dir) / "half.bin").write_bytes(bytes(10))
        raise MemoryError


def test_out_of_memory_in_a_backend(manager, tmp_path, one_line_error):
    manager.register(_OutOfMemory(), "oom")
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "oom", "-p", "fp32", "-o", str(tmp_path / "out")])
    one_line_error(res, 1, "backend 'oom' ran out of memory in export")
    assert list(tmp_path.iterdir()) == []
