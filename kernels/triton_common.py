"""Triton helpers shared by kernels' Triton sources (listed in each user's ``Impl.sources``, so a
change here re-tunes them)."""
import os

import triton
import triton.language as tl

# Triton's interpreter multiplies bfloat16 dot operands as their uint16 storage
# (triton-lang/triton#11584; its debugging guide: bfloat16 is unsupported, cast to float32).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def wait_for_predecessor(GDC: tl.constexpr):
    """With GDC=1 (set for a programmatic dependent launch by kernels/launch.py and plugin_gen on
    sm_90+): wait until the grid before this one has finished and its memory is visible, then
    let the next grid start launching. Call it before the first access to memory an earlier
    kernel may write or read; with GDC=0 it is nothing."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def dot(a, b, acc):
    """acc + a @ b with fp32 accumulation: fp32 operands as true fp32 products (not TF32),
    fp16/bf16 on the tensor cores."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    if _INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)
