"""Tuned winners, stored through SQLAlchemy (SQLite by default, any SQLAlchemy URL).

``open_store(url)`` gives a :class:`Store`; ``best_config(gpu, kernel, dtype, shape)`` is the
lookup the kernels and plugin generator use. The URL defaults to ``$CONFORMER_TRT_DB``, else
``sqlite:///conformer_trt.db`` in the working directory.
"""
from .db import DEFAULT_URL, StoreError
from .store import Store, best_config, open_store
from .winner import InvalidWinner, Winner, validate

__all__ = ["DEFAULT_URL", "InvalidWinner", "Store", "StoreError", "Winner", "best_config",
           "open_store", "validate"]
