"""Call a built library's C ABI from Python through ctypes (torch tensors, or raw device pointers).

    lib = Library("out/libconformer_trt.so")
    lib.launch("layernorm", {"x": x, "weight": w, "bias": b, "y": y}, shape, {"eps": 1e-5})

Every call goes through the generic entry points (``ct_launch`` by kernel name, arrays in the
manifest's order); :meth:`Library.function` gives the typed per-kernel one
(``ct_<kernel>_launch``) for callers that convert their arguments once.
"""
from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from pathlib import Path

DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2}
STATUS = {0: "OK", 1: "INVALID_ARGUMENT", 2: "UNSUPPORTED", 3: "WORKSPACE_TOO_SMALL",
          4: "CUDA_ERROR", 5: "NO_DRIVER", 6: "WRONG_GPU"}


class LibraryError(RuntimeError):
    """A C ABI call that returned an error; ``status`` is its code, the message the library's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS.get(status, status)}: {message}")
        self.status = status


class Library:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        lib = ctypes.CDLL(str(self.path.resolve()))
        P, I32, I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        lib.ct_last_error.restype = ctypes.c_char_p
        lib.ct_manifest.restype = ctypes.c_char_p
        lib.ct_check_device.restype = ctypes.c_int
        lib.ct_select.argtypes = [ctypes.c_char_p, I32, ctypes.POINTER(I64), I32]
        lib.ct_select.restype = ctypes.c_int
        lib.ct_workspace_size.argtypes = [ctypes.c_char_p, I32, ctypes.POINTER(I64),
                                          ctypes.POINTER(ctypes.c_size_t)]
        lib.ct_workspace_size.restype = ctypes.c_int
        lib.ct_launch.argtypes = [ctypes.c_char_p, I32, ctypes.POINTER(P), ctypes.POINTER(I64),
                                  ctypes.POINTER(ctypes.c_float), P, ctypes.c_size_t, P]
        lib.ct_launch.restype = ctypes.c_int
        self._lib = lib
        self.manifest = json.loads(lib.ct_manifest().decode())

    def last_error(self) -> str:
        return self._lib.ct_last_error().decode(errors="replace")

    def _check(self, status: int) -> None:
        if status != 0:
            raise LibraryError(status, self.last_error())

    def kernel(self, name: str) -> dict:
        if name not in self.manifest["kernels"]:
            raise ValueError(f"this library has no kernel {name!r}; it has "
                             f"{sorted(self.manifest['kernels'])}")
        return self.manifest["kernels"][name]

    def dims(self, kernel: str, shape: Mapping[str, int]):
        names = [d["name"] for d in self.kernel(kernel)["dims"]]
        if set(shape) != set(names):
            raise ValueError(f"{kernel}: shape needs exactly the dims {names}, got {sorted(shape)}")
        return (ctypes.c_int64 * len(names))(*(int(shape[n]) for n in names))

    def check_device(self) -> None:
        self._check(self._lib.ct_check_device())

    def select(self, kernel: str, dtype: str, shape: Mapping[str, int]) -> int:
        """Index (into the manifest's variants) of the winner serving this shape."""
        dims = self.dims(kernel, shape)
        index = self._lib.ct_select(kernel.encode(), DTYPE_CODES[dtype], dims, len(dims))
        if index < 0:
            raise LibraryError(2, self.last_error())
        return index

    def workspace_size(self, kernel: str, dtype: str, shape: Mapping[str, int]) -> int:
        size = ctypes.c_size_t()
        self._check(self._lib.ct_workspace_size(kernel.encode(), DTYPE_CODES[dtype],
                                                self.dims(kernel, shape), ctypes.byref(size)))
        return size.value

    def launch(self, kernel: str, tensors: Mapping[str, object], shape: Mapping[str, int],
               scalars: Mapping[str, float] | None = None, dtype: str | None = None,
               workspace=None, stream: int | None = None) -> None:
        """Launch onto ``stream`` (default: PyTorch's current stream). ``tensors`` map names to
        torch tensors or device pointers (absent optional ones: omitted or None); ``workspace`` is
        a tensor or pointer of at least :meth:`workspace_size` bytes (allocated when None)."""
        entry = self.kernel(kernel)
        unknown = set(tensors) - {t["name"] for t in entry["tensors"]}
        unknown |= set(scalars or {}) - set(entry["scalars"])
        if unknown:
            raise ValueError(f"{kernel}: unknown tensors or scalars {sorted(unknown)}")
        if dtype is None:
            dtype = _act_dtype(entry, tensors)
        dims = self.dims(kernel, shape)
        ptrs = (ctypes.c_void_p * len(entry["tensors"]))(
            *(_pointer(tensors.get(t["name"])) for t in entry["tensors"]))
        values = {**entry["scalars"], **(scalars or {})}
        floats = (ctypes.c_float * max(1, len(values)))(*(float(values[s]) for s in entry["scalars"]))
        size = self.workspace_size(kernel, dtype, shape) if workspace is None else None
        if workspace is None and size:
            import torch

            device = next((t.device for t in tensors.values() if hasattr(t, "device")), "cuda")
            workspace = torch.empty(size, dtype=torch.uint8, device=device)
        nbytes = size if size is not None else _nbytes(workspace)
        if stream is None:
            import torch

            stream = torch.cuda.current_stream().cuda_stream
        self._check(self._lib.ct_launch(kernel.encode(), DTYPE_CODES[dtype], ptrs, dims, floats,
                                        _pointer(workspace), nbytes or 0, stream))

    def function(self, kernel: str):
        """The typed ``ct_<kernel>_launch`` (tensors, dims, scalars, dtype, workspace, bytes,
        stream), with ctypes argument types set."""
        entry = self.kernel(kernel)
        fn = getattr(self._lib, entry["c_launch"])
        fn.argtypes = ([ctypes.c_void_p] * len(entry["tensors"])
                       + [ctypes.c_int64] * len(entry["dims"])
                       + [ctypes.c_float] * len(entry["scalars"])
                       + [ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
        fn.restype = ctypes.c_int
        return fn


def _pointer(value) -> int | None:
    if value is None:
        return None
    if hasattr(value, "data_ptr"):
        return value.data_ptr() or None
    return int(value)


def _nbytes(value) -> int:
    if value is None:
        return 0
    if hasattr(value, "untyped_storage"):
        return value.numel() * value.element_size()
    raise ValueError("pass the workspace as a tensor (its size is needed)")


def _act_dtype(entry: dict, tensors: Mapping[str, object]) -> str:
    for t in entry["tensors"]:
        value = tensors.get(t["name"])
        if t["dtype"] == "act" and hasattr(value, "dtype"):
            return str(value.dtype).removeprefix("torch.")
    raise ValueError("give dtype= when no activation tensor is a torch tensor")
