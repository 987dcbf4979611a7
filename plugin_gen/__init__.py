"""plugin_gen: tuned winners → a TensorRT plugin library (.so) for the target GPU.

``plugin-gen build --gpu a10 --out DIR`` reads the winners for that GPU, compiles each for the
GPU's architecture (Triton ahead of time, CUDA with NVRTC: no GPU needed), and generates and
compiles one shared library with

* a C ABI per kernel (``ct_<kernel>_launch``) that picks the winner of the runtime shape's bucket
  and launches its embedded cubin through the CUDA driver (``conformer_trt.h``);
* TensorRT plugins (IPluginV3) for every kernel, exported through ``getCreators`` (when TensorRT's
  headers are found);
* a JSON manifest (GPU, arch, versions, kernels, buckets, configs, hashes), embedded and beside it.

:mod:`plugin_gen.loader` calls the C ABI from Python (and imports neither torch nor Triton, so
loading a library stays cheap); ``build`` and ``BuildError`` are imported on first use.
"""


def __getattr__(name: str):
    import importlib

    where = {"build": "builder", "BuildResult": "builder", "BuildError": "winners"}
    if name not in where:
        raise AttributeError(f"module 'plugin_gen' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{where[name]}"), name)


__all__ = ["BuildError", "BuildResult", "build"]
