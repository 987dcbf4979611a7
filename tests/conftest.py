"""Test setup: GPU tests are marked and skipped without a GPU; without one, Triton kernels run
in its CPU interpreter (set before any kernel module is imported)."""
import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if item.get_closest_marker("gpu") or item.get_closest_marker("bench"):
            item.add_marker(skip)


@pytest.fixture
def device():
    """Where kernels run: the GPU if there is one, else the CPU through Triton's interpreter."""
    return torch.device("cuda" if HAS_GPU else "cpu")


@pytest.fixture(autouse=True)
def _private_cubin_cache(tmp_path, monkeypatch):
    """Each test compiles into its own cubin cache, so none depends on another's leftovers."""
    monkeypatch.setenv("CONFORMER_TRT_CACHE", str(tmp_path / "cache"))
