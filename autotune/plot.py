"""``autotune plot``: PNGs of what the tuner found.

* ``speedup_<kernel>.png``: the winner's speedup over the kernel's PyTorch baseline against the
  bucket size (the product of the bucket's dynamic dims: batch x sequence length for most
  kernels), one line per implementation, dtype and static shape.
* ``history_<kernel>.png``: per implementation, each study's best time so far, divided by its
  final best, against the number of configs measured: how quickly the search converged.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import kernels
from cache import Store
from cache.models import bucket_key
from kernels import launch

from .evaluate import MEASURED
from .search import outcome
from .space import NAMESPACE


def plot(store: Store, gpu: str, kernel_names: list[str] | None, out_dir: Path) -> list[Path]:
    """Write the PNGs for ``gpu``'s winners into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    winners = store.winners(gpu, kernel_names)
    for name in sorted({w.kernel for w in winners}):
        k = kernels.get(name)
        series = defaultdict(list)
        for w in winners:
            if w.kernel == name and w.speedup:
                static = {d: w.bucket[d] for d in k.static_dims}
                x = math.prod(w.bucket[d] for d in k.dynamic_dims)
                series[f"{w.impl} {w.dtype} {bucket_key(static)}"].append((x, w.speedup))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bucket: " + " x ".join(k.dynamic_dims))
        ax.set_ylabel("speedup over the PyTorch op")
        ax.set_title(f"{name} on {gpu}: tuned winners")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / f"speedup_{name}.png"))
        written.append(_history(plt, store, gpu, k, out_dir))
    return written


def _history(plt, store: Store, gpu: str, kernel, out_dir: Path) -> Path:
    import optuna

    storage = store.optuna_storage()
    names = optuna.study.get_all_study_names(storage)
    fig, axes = plt.subplots(1, len(kernel.impls), figsize=(6 * len(kernel.impls), 4.5),
                             squeeze=False)
    for ax, impl in zip(axes[0], kernel.impls):
        prefix = f"{NAMESPACE}:{gpu}:{kernel.name}:{impl.name}:"
        source = launch.source_hash(impl)
        for study_name in sorted(n for n in names
                                 if n.startswith(prefix) and n.endswith(f":{source}")):
            study = optuna.load_study(study_name=study_name, storage=storage)
            times = [t.value if outcome(t) == "ok" else math.inf
                     for t in study.get_trials(deepcopy=False) if outcome(t) in MEASURED]
            best = min(times, default=math.inf)
            if not math.isfinite(best):
                continue
            running, ys = math.inf, []
            for t in times:
                running = min(running, t)
                ys.append(running / best if math.isfinite(running) else math.nan)
            dtype, bucket = study_name[len(prefix):].split(":")[:2]
            ax.step(range(1, len(ys) + 1), ys, where="post", label=f"{dtype} {bucket}")
        ax.set_title(f"{kernel.name}/{impl.name} on {gpu}")
        ax.set_xlabel("configs measured")
        ax.set_ylabel("best so far / final best")
        ax.legend(fontsize=6)
    return _save(fig, out_dir / f"history_{kernel.name}.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
