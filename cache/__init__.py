"""Tuned winners, stored through SQLAlchemy (SQLite by default, any SQLAlchemy URL).

``open_store(url)`` gives a :class:`Store`; ``best_config(gpu, kernel, dtype, shape)`` is the
lookup the kernels and plugin generator use. The URL defaults to ``$CONFORMER_TRT_DB``, else
``sqlite:///conformer_trt.db`` in the working directory.

The names below are imported on first use (PEP 562), so ``cache.db`` and ``cache.models`` load
without the kernels' torch and Triton (a warm ``autotune run`` needs only those two).
"""
import importlib

_WHERE = {"DEFAULT_URL": "db", "StoreError": "db", "Store": "store", "best_config": "store",
          "open_store": "store", "InvalidWinner": "winner", "Winner": "winner",
          "validate": "winner"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'cache' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
