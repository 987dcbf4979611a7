"""Which config a benchmark runs, and where it came from: the tuner's winner for this GPU and
the shape's bucket where the store has one (``autotune run``), else the heuristic."""
from kernels import launch


def config_for(kernel, impl, shape, dtype="float16"):
    """(config, "tuned" | "heuristic")."""
    try:
        from cache import best_config
    except ImportError:   # no SQLAlchemy on this machine: no tuned configs either
        return launch.default_config(kernel, impl, shape, dtype), "heuristic"
    found = best_config("auto", kernel.name, dtype, shape, impl=impl.name)
    if found is not None:
        return found.config, "tuned"
    return launch.default_config(kernel, impl, shape, dtype), "heuristic"
