"""The GPUs we build and tune for: their limits, and recognising the one we run on.

Limits per compute capability are from the CUDA C++ Programming Guide, "Technical Specifications
per Compute Capability" (shared memory per block with opt-in, per multiprocessor, registers);
SM counts, L2 sizes and memory bandwidth from NVIDIA's datasheets for each product. Bandwidth
here is the datasheet figure, used only for planning; benchmarks divide by a copy bandwidth they
measure themselves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GpuSpec:
    name: str              # our short name: a10, l4, a100, h100, h200
    pattern: str           # regex matched against the device name the driver reports
    cc: tuple[int, int]    # compute capability
    sms: int
    smem_per_block: int    # bytes, with the opt-in attribute
    smem_per_sm: int       # bytes
    regs_per_sm: int = 65536
    max_threads_per_block: int = 1024
    l2_bytes: int = 0
    dram_gbps: float = 0.0

    @property
    def arch(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}"


KNOWN_GPUS: dict[str, GpuSpec] = {
    g.name: g for g in (
        GpuSpec("a10", r"\bA10\b(?!0)", (8, 6), 72, 101376, 102400, l2_bytes=6 << 20, dram_gbps=600),
        GpuSpec("l4", r"\bL4\b", (8, 9), 58, 101376, 102400, l2_bytes=48 << 20, dram_gbps=300),
        GpuSpec("a100", r"\bA100\b", (8, 0), 108, 166912, 167936, l2_bytes=40 << 20,
                dram_gbps=2039),
        GpuSpec("h100", r"\bH100\b", (9, 0), 132, 232448, 233472, l2_bytes=50 << 20,
                dram_gbps=3350),
        GpuSpec("h200", r"\bH200\b", (9, 0), 132, 232448, 233472, l2_bytes=60 << 20,
                dram_gbps=4800),
    )
}

# Generic limits per architecture, for building for an sm_XX that is not a named product.
_ARCH_LIMITS = {(8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448}


def by_name(name: str) -> GpuSpec:
    """Look a GPU up by our short name; unknown names get a clear error listing the known ones."""
    key = name.strip().lower()
    if key not in KNOWN_GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(KNOWN_GPUS))}, or 'auto'")
    return KNOWN_GPUS[key]


def for_arch(arch: str) -> GpuSpec:
    """A spec carrying only the architecture's limits (for compile-only work on a named sm_XX)."""
    m = re.fullmatch(r"sm_(\d)(\d)a?", arch)
    if not m or (int(m[1]), int(m[2])) not in _ARCH_LIMITS:
        raise ValueError(f"unsupported architecture {arch!r}; supported: "
                         + ", ".join(f"sm_{a}{b}" for a, b in sorted(_ARCH_LIMITS)))
    cc = (int(m[1]), int(m[2]))
    return GpuSpec(arch, "", cc, sms=1, smem_per_block=_ARCH_LIMITS[cc],
                   smem_per_sm=_ARCH_LIMITS[cc] + 1024)


@dataclass(frozen=True)
class RunningGpu:
    """What the driver says about the device in use."""
    device_name: str
    cc: tuple[int, int]
    sms: int
    driver: str
    cuda: str
    spec: GpuSpec


def identify(device_name: str, cc: tuple[int, int]) -> GpuSpec | None:
    """Match a reported device name against the known GPUs (None if it is none of them)."""
    for spec in KNOWN_GPUS.values():
        if re.search(spec.pattern, device_name) and spec.cc == cc:
            return spec
    return None


def running(device: int | None = None) -> RunningGpu:
    """Describe the current CUDA device; raises RuntimeError if there is none."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is available on this machine")
    dev = torch.cuda.current_device() if device is None else device
    props = torch.cuda.get_device_properties(dev)
    cc = (props.major, props.minor)
    spec = identify(props.name, cc)
    if spec is None:  # an unnamed GPU still gets its architecture's limits
        spec = replace(for_arch(f"sm_{cc[0]}{cc[1]}"), name=props.name)
    spec = replace(spec, sms=props.multi_processor_count,
                   l2_bytes=getattr(props, "L2_cache_size", spec.l2_bytes))
    return RunningGpu(props.name, cc, props.multi_processor_count, _driver_version(),
                      str(torch.version.cuda), spec)


def _driver_version() -> str:
    from cuda.bindings import driver

    err, version = driver.cuDriverGetVersion()
    if err != driver.CUresult.CUDA_SUCCESS:
        return "unknown"
    return f"{version // 1000}.{version % 1000 // 10}"


def check_target(requested: str, device: int | None = None) -> RunningGpu:
    """Refuse to tune for ``requested`` on a different GPU: timings only hold where they were made."""
    gpu = running(device)
    if requested.strip().lower() == "auto":
        return gpu
    want = by_name(requested)
    if gpu.spec.name != want.name:
        raise RuntimeError(
            f"--gpu {requested} asked for, but this machine's GPU is {gpu.device_name!r} "
            f"(sm_{gpu.cc[0]}{gpu.cc[1]}); timings are only true for the GPU that made them. "
            f"Run on a {want.name} or pass --gpu auto.")
    return gpu
