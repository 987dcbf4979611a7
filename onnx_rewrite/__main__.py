"""``python -m onnx_rewrite`` is ``conformer-trt onnx-rewrite``."""
from .cli import main

raise SystemExit(main())
