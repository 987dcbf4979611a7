"""Fused Conformer kernels and the contract they share.

Each subpackage is one kernel and defines ``KERNEL`` (a :class:`kernels.contract.Kernel`);
``registry()`` finds them, so adding a kernel means adding its folder and nothing else.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

from .contract import Kernel, validate_declaration


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, Kernel]:
    """All kernels by name, discovered from the subpackages of ``kernels``."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        kernel = getattr(module, "KERNEL", None)
        if kernel is None:
            continue
        validate_declaration(kernel)
        if kernel.name in found:
            raise ValueError(f"two kernels are named {kernel.name!r}")
        found[kernel.name] = kernel
    return found


def get(name: str) -> Kernel:
    kernels = registry()
    if name not in kernels:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(sorted(kernels))}")
    return kernels[name]
