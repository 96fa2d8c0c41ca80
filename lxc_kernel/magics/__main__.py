"""``python -m lxc_kernel.magics [--markdown]``: print the magics' help (the README's section)."""

from __future__ import annotations

from . import main

raise SystemExit(main())
