"""Checking an implementation against its kernel's reference, with fresh inputs and poisoned
outputs. Shared by the tests and the tuner (a candidate that fails here never gets timed)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import launch
from .contract import Impl, Kernel


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf when out holds NaN/inf (unwritten or overflowed)."""
    out, ref = out.double(), ref.double().to(out.device)
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


@dataclass
class Verdict:
    errors: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __str__(self) -> str:
        errs = ", ".join(f"{k}={v:.3g}" for k, v in self.errors.items())
        return f"{'ok' if self.ok else 'WRONG'} ({errs}; tolerance {self.tolerance:g})"


def verify(kernel: Kernel, impl: Impl, config, shape, dtype: str, device, seed: int = 0,
           inputs=None) -> Verdict:
    """Run ``impl`` once on fresh random inputs (or ``inputs``) into NaN-poisoned outputs and
    compare every output with the float64 reference."""
    if inputs is None:
        gen = torch.Generator(device=device).manual_seed(seed)
        inputs = kernel.make_inputs(shape, launch.torch_dtype(dtype), device, gen)
    outputs = launch.empty_outputs(kernel, shape, dtype, device, poison=True)
    launch.run(kernel, impl, config, {**inputs, **outputs}, shape)
    reference = kernel.reference(inputs, shape, kernel.scalars)
    errors = {name: relative_error(outputs[name], reference[name]) for name in reference}
    return Verdict(errors, kernel.tolerance[dtype])
