"""The SASS of a CUDA kernel compiled without a GPU, through the cuobjdump that Triton bundles
(pytest.skip where it is missing)."""
import pytest

import kernels
from kernels import contract, launch, sass


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
    try:
        sass.cuobjdump()
    except FileNotFoundError as e:
        pytest.skip(f"{e}: SASS not checked")
    return sass.disassemble(cubin, flag)
