"""``python -m bench [--quick] [--only SCENARIO ...]``."""

from .runner import main

raise SystemExit(main())
