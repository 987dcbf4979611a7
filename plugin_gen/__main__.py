"""``python -m plugin_gen`` is ``plugin-gen``."""
from .cli import main

raise SystemExit(main())
