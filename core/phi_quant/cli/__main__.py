"""``python -m phi_quant.cli`` (used by ``compare`` and ``batch`` to run cells in subprocesses)."""

from ..parent_watch import follow_parent
from . import main

if __name__ == "__main__":
    follow_parent()
    main()
