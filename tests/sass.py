"""The SASS of a CUDA kernel compiled without a GPU, through the cuobjdump that Triton bundles
(pytest.skip where it is missing)."""
import subprocess
import tempfile
from pathlib import Path

import pytest
import triton

import kernels
from kernels import contract, launch


def sass_of(kernel: str, impl: str, config, shape, dtype="float16", arch="sm_90") -> str:
    """cuobjdump -sass of ``kernel``/``impl`` with ``config`` at ``shape``, compiled by NVRTC."""
    k = kernels.get(kernel)
    chosen = k.impl(impl)
    consts = contract.resolved_constants(k, chosen, config, shape, dtype)
    cubin = launch.cuda_cubin(chosen, consts, dtype, arch)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("Triton's bundled cuobjdump is missing: SASS not checked")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
