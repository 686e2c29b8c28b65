"""Where a conversion may write, and how its output appears there atomically.

The output directory ``-o OUT`` is checked before anything is created: it must not be the source
checkpoint, lie inside it or contain it (``--force`` would otherwise delete the user's weights),
must not lie in the Hugging Face cache, and its name must fit the file system even with the
temporary suffix. The backend writes into a fresh temporary directory next to OUT (same file
system, so the final move is a rename); parent directories created for OUT are remembered and
removed again if the conversion fails, so a failure leaves the disk as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputExistsError, OutputLocationError, os_error

__all__ = ["NAME_MAX", "check_destination", "check_location", "partial_prefix", "OutputStaging"]

#: Longest file name (bytes) the common file systems accept.
NAME_MAX = 255
#: Characters of OUT's name kept in the temporary and set-aside names (they add ~20 more).
_TAG = 100


def partial_prefix(output: Path) -> str:
    """The name prefix of OUT's temporary directory (``sweep_partial`` finds a killed run's by it)."""
    return f".{output.name[:_TAG]}.partial-"


def _hub_cache() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        return None
    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def check_destination(output: Path, force: bool) -> None:
    """Refuse an existing OUT without ``--force``, a non-directory in the way, and an impossible name."""
    if len(os.fsencode(output.name)) > NAME_MAX:
        raise OutputLocationError(
            f"the output name {output.name[:40]}... is {len(os.fsencode(output.name))} bytes; file systems allow "
            f"{NAME_MAX}. Choose a shorter -o"
        )
    if output.exists() or output.is_symlink():
        if not force:
            raise OutputExistsError(f"{output} already exists; choose another -o or pass --force to replace it")
        if not output.is_dir():
            raise OutputExistsError(f"{output} exists and is not a directory; remove it or choose another -o")
    for parent in output.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputLocationError(f"cannot create {output}: {parent} is a file, not a directory; choose another -o")
            break


def check_location(output: Path, source_dirs: tuple[Path, ...]) -> None:
    """Refuse an OUT that is, contains or is inside the source (symlinks resolved), or is in the Hub cache."""
    out = output.resolve()
    for src in source_dirs:
        src = src.resolve()
        if out == src:
            what = "is the source checkpoint"
        elif out.is_relative_to(src):
            what = f"is inside the source checkpoint {src}"
        elif src.is_relative_to(out):
            what = f"contains the source checkpoint {src}"
        else:
            continue
        raise OutputLocationError(
            f"-o {output} {what}; phi-quant never writes into or over its input (with --force that would delete "
            "the weights). Choose an output directory outside the checkpoint"
        )
    cache = _hub_cache()
    if cache is not None and (out == cache or out.is_relative_to(cache)):
        raise OutputLocationError(
            f"-o {output} is inside the Hugging Face cache ({cache}); huggingface_hub manages that directory and "
            "may delete or overwrite it. Choose an output directory outside the cache"
        )


class OutputStaging:
    """The temporary directory next to OUT, and the parents created for it, undone on failure.

    ``with OutputStaging(out, force) as tmp:`` creates missing parents and ``tmp``; :meth:`commit`
    moves ``tmp`` into place (with ``force``, the old OUT is renamed aside first and deleted only
    after the new one is in place). Leaving the block without ``commit`` (an error, Ctrl-C)
    removes ``tmp`` and every parent directory this object created.
    """

    def __init__(self, output: Path, force: bool):
        self.output, self.force = output, force
        self.created: list[Path] = []
        self.tmp: Path | None = None
        self._done = False

    def __enter__(self) -> Path:
        missing = [p for p in [self.output.parent, *self.output.parent.parents] if not p.exists()]
        for parent in reversed(missing):
            try:
                parent.mkdir()
            except FileExistsError:
                continue  # created meanwhile by someone else: not ours to remove
            except OSError as exc:
                self._undo()
                raise os_error(exc, f"creating {parent} for -o {self.output}") from exc
            self.created.append(parent)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(self.output), dir=self.output.parent))
        except OSError as exc:
            self._undo()
            raise os_error(exc, f"creating a temporary directory in {self.output.parent}") from exc
        return self.tmp

    def commit(self) -> None:
        """Rename the finished temporary directory to OUT."""
        assert self.tmp is not None
        output, aside = self.output, None
        if output.exists() or output.is_symlink():
            if not self.force:
                raise OutputExistsError(f"{output} appeared while converting; pass --force to replace it")
            aside = Path(tempfile.mkdtemp(prefix=f".{output.name[:_TAG]}.old-", dir=output.parent))
            aside.rmdir()
            os.rename(output, aside)
        try:
            os.rename(self.tmp, output)
        except OSError as exc:
            if aside is not None:
                os.rename(aside, output)
            raise os_error(exc, f"moving the result to {output}") from exc
        self._done = True
        if aside is not None:
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)

    def _undo(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for parent in reversed(self.created):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty any more (someone else wrote there): leave it and its parents

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self._undo()
