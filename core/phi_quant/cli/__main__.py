"""``python -m phi_quant.cli`` (used by ``compare`` to run cells in subprocesses)."""

from . import main

if __name__ == "__main__":
    main()
