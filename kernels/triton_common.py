"""Triton helpers shared by kernels' Triton sources (listed in each user's ``Impl.sources``, so a
change here re-tunes them)."""
import os

import triton
import triton.language as tl

# Triton's interpreter multiplies bfloat16 dot operands as their uint16 storage
# (triton-lang/triton#11584; its debugging guide: bfloat16 is unsupported, cast to float32).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


HAS_GDC = hasattr(tl.extra.cuda, "gdc_wait")   # grid dependency control: Triton 3.4+

if HAS_GDC:
    @triton.jit
    def wait_for_predecessor(GDC: tl.constexpr):
        """With GDC=1 (set for a programmatic dependent launch by kernels/launch.py and plugin_gen
        on sm_90+): wait until the grid before this one has finished and its memory is visible,
        then let the next grid start launching. Call it before the first access to memory an
        earlier kernel may write or read; with GDC=0 it is nothing."""
        if GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
else:
    # Triton 3.3 has no grid dependency control, and its JIT resolves every attribute of a body,
    # an untaken branch's too, so the call above would fail to compile even with GDC=0; its
    # launches are plain ones (launch.triton_has_pdl).
    @triton.jit
    def wait_for_predecessor(GDC: tl.constexpr):
        """Nothing: this Triton cannot make programmatic dependent launches (GDC is 0)."""
        tl.static_assert(GDC == 0, "this Triton has no grid dependency control (3.4+)")


@triton.jit
def dot(a, b, acc):
    """acc + a @ b with fp32 accumulation: fp32 operands as true fp32 products (not TF32),
    fp16/bf16 on the tensor cores."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    if _INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)
