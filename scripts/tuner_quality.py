"""Does the model-based search find what an exhaustive grid finds, with a quarter of the trials?

Issue 3's target: with at most 25 % of an exhaustive grid's trials, the optuna winner is within
3 % of the grid's best. For each shape of ``--kernel`` (its ``tune_shapes`` at ``--batch`` x
``--seq-len``) and each implementation this script

1. measures every valid config (a grid study);
2. runs ``--seeds`` studies of ``floor(fraction x valid configs)`` trials each with
   ``--sampler`` (default gp, what ``autotune run`` uses for a listed space beyond the grid;
   tpe for the product spaces' sampler);
3. compares each winner with the grid's best in two ways: its own measured time, and the
   grid's measurement of the same config (same session, so run-to-run noise is out).

Every study is a real ``autotune`` study (same evaluator, worker and timing), each phase in its
own database. The JSON written to ``--out`` holds every grid measurement, so

    python scripts/tuner_quality.py --replay tuner_quality.json --seeds 200

re-runs the search phase offline over the measured table for many seeds (no GPU: each "measurement"
is looked up), to show how often a seed misses, not just whether one run did.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune import evaluate, run, search, space  # noqa: E402
from autotune.evaluate import Measurement  # noqa: E402
from autotune.worker import Pool  # noqa: E402
from cache import open_store  # noqa: E402
from kernels import gpu as gpus  # noqa: E402
from kernels.contract import ModelDims  # noqa: E402


class Replay:
    """An evaluator that answers from a grid measured earlier (``--replay``)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.table = {(r["impl"], json.dumps(r["shape"], sort_keys=True), space.config_key(c)):
                      (median, spread, outcome)
                      for r in doc["results"] for c, median, spread, outcome in r["grid"]}

    def devices(self, requested):
        g = self.doc["device"]
        return [gpus.RunningGpu(g["device_name"], tuple(g["cc"]), g["sms"], g["driver"],
                                g["cuda"], gpus.by_name(self.doc["gpu"]))]

    def measure(self, c):
        if c.config is None:
            return Measurement("error", detail="a replay has no baseline")
        median, spread, outcome = self.table[(c.impl, json.dumps(c.shape, sort_keys=True),
                                              space.config_key(c.config))]
        return Measurement(outcome, median, spread)


def _studies(store, tasks, gpu_name):
    """{task: [(config, median, spread, outcome)]} of the measured trials of each study."""
    import optuna

    out = {}
    for t in tasks:
        study = optuna.load_study(study_name=t.study_name(gpu_name, "quality"),
                                  storage=store.optuna_storage())
        out[t] = [(search.trial_config(x), x.value, (x.user_attrs["result"] or {}).get("spread_us"),
                   search.outcome(x))
                  for x in study.get_trials(deepcopy=False)
                  if search.outcome(x) in evaluate.MEASURED]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", default="auto")
    p.add_argument("--kernel", default="layernorm")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=500)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--max-shapes", type=int, default=1, help="first N of the kernel's shapes")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sampler", choices=("gp", "tpe"), default="gp",
                   help="the search compared with the grid")
    p.add_argument("--out", default="tuner_quality.json")
    p.add_argument("--workdir", help="folder for the phase databases (default: a temp dir)")
    p.add_argument("--replay", help="a JSON written by an earlier run: search phase only, offline")
    p.add_argument("--evaluator", default=evaluate.DEFAULT_EVALUATOR, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    started = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tuner_quality_"))
    workdir.mkdir(parents=True, exist_ok=True)
    doc = json.loads(Path(args.replay).read_text()) if args.replay else None
    if doc:
        args.gpu, args.kernel, args.dtype = doc["gpu"], doc["kernel"], doc["dtype"]
        dims = ModelDims(**doc["dims"])
        evaluator, isolate = Replay(doc), False
    else:
        dims = ModelDims(batch=args.batch, seq_len=args.seq_len, d_model=args.d_model)
        evaluator, isolate = args.evaluator, True
    tasks = space.tasks([args.kernel], [args.dtype], [dims])
    shapes = list(dict.fromkeys(t.shape for t in tasks))[:args.max_shapes]
    tasks = [t for t in tasks if t.shape in shapes]
    base = run.Settings(evaluator=evaluator, isolate=isolate, namespace="quality",
                        progress=False)
    device = evaluate.load_evaluator(evaluator).devices(args.gpu)[0]
    gpu_name = device.spec.name
    out = {"gpu": gpu_name, "device": {"device_name": device.device_name, "cc": device.cc,
                                       "sms": device.sms, "driver": device.driver,
                                       "cuda": device.cuda},
           "kernel": args.kernel, "dtype": args.dtype, "dims": dims.__dict__,
           "fraction": args.fraction, "sampler": args.sampler, "replayed_from": args.replay,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv), "seconds": {}, "results": []}

    def save(phase):   # after every phase, so that a run cut short still leaves its data
        out["seconds"][phase] = round(time.monotonic() - started, 1)
        Path(args.out).write_text(json.dumps(out, indent=1))

    with Pool(evaluator, [None], base.timeout_s, isolate) as pool:
        if doc:
            grids = {t: next(r["grid"] for r in doc["results"] if r["impl"] == t.impl
                             and r["shape"] == dict(t.shape)) for t in tasks}
        else:
            grid_store = open_store(f"sqlite:///{workdir / 'grid.db'}")
            run.tune(tasks, args.gpu, grid_store, dataclasses.replace(base, sampler="grid"),
                     pool=pool)
            grids = _studies(grid_store, tasks, gpu_name)
        tables = {t: {space.config_key(c): m for c, m, _, o in grids[t] if o == "ok"}
                  for t in tasks}
        out["results"] = [{"impl": t.impl, "shape": dict(t.shape), "bucket": dict(t.bucket),
                           "n_valid": len(grids[t]), "grid": [list(g) for g in grids[t]],
                           "grid_best": min(tables[t].values()), "search": []} for t in tasks]
        save("grid")
        for seed in range(args.seeds):
            store = open_store(f"sqlite:///{workdir / f'{args.sampler}-{seed}.db'}")
            settings = dataclasses.replace(base, sampler=args.sampler, seed=seed,
                                           budget=space.Budget(args.fraction))
            report = run.tune(tasks, args.gpu, store, settings, out=io.StringIO(), pool=pool)
            for r, t in zip(out["results"], tasks):
                w = next(w for w in report.tuned
                         if w.impl == t.impl and w.bucket == dict(t.bucket))
                on_grid = tables[t].get(space.config_key(w.config), math.nan)
                r["search"].append({"seed": seed, "trials": w.trials, "config": w.config,
                                 "median_us": w.median_us, "grid_median_of_winner": on_grid,
                                 "ratio_self": w.median_us / r["grid_best"],
                                 "ratio_grid": on_grid / r["grid_best"]})
            save(f"{args.sampler} seed {seed}")
    _print(out)
    return 0


def _print(doc) -> None:
    kind = "replayed over the measured grid" if doc["replayed_from"] else "measured"
    name = doc["sampler"].upper()
    print(f"\n{doc['kernel']} {doc['dtype']} on {doc['gpu']} ({doc['device']['device_name']}), "
          f"{name} with {doc['fraction']:.0%} of the valid configs, {kind}")
    print(f"{'impl':8} {'shape':36} {'grid':>5} {name:>4} {'grid best us':>12} "
          f"{name + '/grid (self)':>16} {name + '/grid (grid)':>16} {'<=3%':>6}")
    ratios = []
    for r in doc["results"]:
        self_r = [x["ratio_self"] for x in r["search"]]
        grid_r = [x["ratio_grid"] for x in r["search"]]
        ratios += grid_r
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        print(f"{r['impl']:8} {shape:36} {r['n_valid']:5} {r['search'][0]['trials']:4} "
              f"{r['grid_best']:12.2f} {_span(self_r):>16} {_span(grid_r):>16} "
              f"{sum(x <= 1.03 for x in grid_r):3}/{len(grid_r)}")
    print(f"overall: {sum(x <= 1.03 for x in ratios)}/{len(ratios)} {name} winners within 3 % of "
          f"the grid's best (grid-measured); median ratio {statistics.median(ratios):.4f}, "
          f"worst {max(ratios):.4f}; {_phases(doc['seconds'])}")


def _phases(seconds) -> str:
    """The grid's time and the mean time of a search study (seconds are since the start)."""
    marks = list(seconds.values())
    per_study = (marks[-1] - marks[0]) / max(len(marks) - 1, 1)
    return f"grid {marks[0]:.1f} s, {per_study:.1f} s per search study"


def _span(values) -> str:
    return f"{statistics.median(values):.3f} ({max(values):.3f})"


if __name__ == "__main__":
    sys.exit(main())
