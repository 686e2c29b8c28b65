"""The evaluation and calibration texts: real prose from files the machine ships, never the same files,
with a provenance record; and the fallback to license files that installed wheels carry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from phi_quant import texts


def _words(text: str) -> set[str]:
    return set(text.lower().split())


def test_evaluation_and_calibration_are_different_real_prose():
    ev, cal = texts.evaluation_text(), texts.calibration_text()
    for t in (ev, cal):
        assert len(t.text) > 30_000 and t.text.count(".") > 200 and "\ufffd" not in t.text
        assert {"the", "of", "and", "license"} <= _words(t.text)
        rec = t.record()
        assert rec["sha256"] == hashlib.sha256(t.text.encode()).hexdigest() and rec["chars"] == len(t.text)
        for f in rec["files"]:
            assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert not {p for p, _ in ev.files} & {p for p, _ in cal.files}
    assert ev.sha256 != cal.sha256 and ev.text not in cal.text


@pytest.mark.skipif(not (texts.DEBIAN_LICENSES / "GPL-3").is_file(), reason="not a Debian-family system")
def test_on_debian_the_texts_are_the_common_licenses():
    ev, cal = texts.evaluation_text(), texts.calibration_text()
    assert [Path(p).name for p, _ in ev.files] == ["GPL-3"]
    assert ev.text.startswith("                    GNU GENERAL PUBLIC LICENSE")
    assert [Path(p).name for p, _ in cal.files] == ["Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0", "BSD"]
    assert "GNU" not in cal.text.split("Mozilla Public License")[0]  # no GPL-family boilerplate shared


def test_without_debian_licenses_both_come_from_installed_wheels(monkeypatch, tmp_path):
    monkeypatch.setattr(texts, "DEBIAN_LICENSES", tmp_path / "nowhere")
    ev, cal = texts.evaluation_text(), texts.calibration_text()
    paths = [Path(p) for p, _ in ev.files + cal.files]
    assert all("dist-info" in str(p) or "site-packages" in str(p) for p in paths), paths
    assert len(ev.files) == 1 and cal.files and ev.files[0] not in cal.files
    assert {h for _, h in cal.files}.isdisjoint({h for _, h in ev.files})
    assert len(ev.text) > 5000 and texts.evaluation_text() == ev  # deterministic for one environment


def test_user_and_bundled_texts(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("One sentence. Another one.\n", encoding="utf-8")
    t = texts.text_from_file(f)
    assert t.text.startswith("One sentence.") and t.record()["files"] == [
        {"path": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}]
    assert texts.bundled_text().files[0][0].endswith("eval_text.txt")
    with pytest.raises(texts.BadInputError, match="cannot read the text file"):
        texts.text_from_file(tmp_path / "missing.txt")
