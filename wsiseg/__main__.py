"""Allow ``python -m wsiseg``."""

from __future__ import annotations

from wsiseg.cli import main

if __name__ == "__main__":
    main()
