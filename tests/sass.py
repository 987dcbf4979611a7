"""The SASS of a CUDA kernel compiled without a GPU, through the cuobjdump that Triton bundles
(pytest.skip where it is missing)."""
import subprocess
import tempfile
from pathlib import Path

import pytest
import triton

import kernels
from kernels import contract, launch


def sass_of(kernel: str, impl: str, config, shape, dtype="float16", arch="sm_90",
            flag="-sass") -> str:
    """cuobjdump -sass (or ``flag``: -elf for the kernel's attributes) of ``kernel``/``impl``
    with ``config`` at ``shape``, compiled by NVRTC."""
    k = kernels.get(kernel)
    chosen = k.impl(impl)
    return sass_of_constants(chosen, contract.resolved_constants(k, chosen, config, shape, dtype),
                             dtype, arch, flag)


def sass_of_constants(impl, consts, dtype="float16", arch="sm_90", flag="-sass") -> str:
    """sass_of for an implementation's compile-time constants as they are, unchecked (for a
    config the space refuses, to show why)."""
    cubin = launch.cuda_cubin(impl, consts, dtype, arch)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("Triton's bundled cuobjdump is missing: SASS not checked")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([str(tool), flag, f.name], capture_output=True, text=True)
    # Triton's cuobjdump prints every section of -elf, then "Unrecognized opcode" and exits 1
    if done.returncode and not (flag == "-elf" and "EIATTR" in done.stdout):
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout
