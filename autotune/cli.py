"""The ``autotune`` command: ``run``, ``show``, ``export``, ``plot``.

    autotune run --gpu a10 [--kernels K ...] [--impls I ...] [--seq-lens N ...] [--batch B] [--dtype D ...]
                 [--trials N | --time-budget S] [--db URL] [--jobs N]
                 [--d-model D --heads H --ffn F --conv-kernel K]
    autotune show [--gpu NAME] [--kernels K ...] [--db URL]
    autotune export --gpu NAME [--kernels K ...] [--db URL] [-o FILE]
    autotune plot --gpu NAME [--kernels K ...] [--db URL] [--out DIR]

The database is ``--db``, else ``$CONFORMER_TRT_DB``, else ``sqlite:///conformer_trt.db``.
Exit status: 0 done, 1 the run or the database failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kernels.contract import DTYPES, ModelDims

DEFAULT_SEQ_LENS = (128, 256, 512, 1024)
# the arguments that decide what a run tunes and how (part of its key in autotune.memo)
MEMO_ARGS = ("kernels", "impls", "seq_lens", "batch", "dtype", "trials", "time_budget", "seed",
             "d_model", "heads", "ffn", "conv_kernel", "evaluator")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autotune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = ModelDims()

    run = sub.add_parser("run", help="tune kernels for a GPU and store the winners")
    run.add_argument("--gpu", required=True,
                     help="target GPU: a10, l4, a100, h100, h200 ... or auto (this machine's); "
                          "refused unless it is the GPU this machine has")
    run.add_argument("--kernels", nargs="+", help="kernels to tune (default: all)")
    run.add_argument("--impls", nargs="+", metavar="IMPL",
                     help="only these implementations (e.g. cuda_dw; default: all of each kernel)")
    run.add_argument("--seq-lens", nargs="+", type=int, default=list(DEFAULT_SEQ_LENS),
                     help="sequence lengths (frames after subsampling) to tune for")
    run.add_argument("--batch", type=int, default=d.batch)
    run.add_argument("--dtype", nargs="+", default=["float16"], choices=DTYPES)
    budget = run.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, help="configs to measure per study (default 16; "
                                                   "small spaces are measured in full)")
    budget.add_argument("--time-budget", type=float, metavar="S",
                        help="seconds of measuring per study instead of a trial count")
    run.add_argument("--jobs", type=int, default=1,
                     help="worker processes, spread over this machine's GPUs")
    run.add_argument("--seed", type=int, default=0, help="sampler seed")
    run.add_argument("--timeout", type=float, default=120.0,
                     help="seconds one candidate may take before its worker is killed")
    run.add_argument("--d-model", type=int, default=d.d_model)
    run.add_argument("--heads", type=int, default=d.heads)
    run.add_argument("--ffn", type=int, default=d.ffn)
    run.add_argument("--conv-kernel", type=int, default=d.conv_kernel)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--evaluator", default=None, help=argparse.SUPPRESS)   # tests inject one

    show = sub.add_parser("show", help="list stored winners")
    show.add_argument("--gpu", help="only this GPU (default: all)")
    exp = sub.add_parser("export", help="write the winners as JSON (plugin_gen's input)")
    exp.add_argument("--gpu", required=True)
    exp.add_argument("-o", "--output", help="file (default: standard output)")
    plot = sub.add_parser("plot", help="PNGs: speedup per bucket, optimization history")
    plot.add_argument("--gpu", required=True)
    plot.add_argument("--out", default=".", help="folder for the PNGs")
    for s in (show, exp, plot):
        s.add_argument("--kernels", nargs="+")
    for s in (run, show, exp, plot):
        s.add_argument("--db", help="SQLAlchemy URL (default: $CONFORMER_TRT_DB or "
                                    "sqlite:///conformer_trt.db)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("autotune: interrupted; completed trials are kept, run again to resume",
              file=sys.stderr)
        return 130
    except ValueError as e:      # unknown GPU, kernel, bad numbers, refused stored rows
        print(f"autotune: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:    # another GPU, the database, workers that do not start
        print(f"autotune: error: {e}", file=sys.stderr)
        return 1


def _kernel_names(names: list[str] | None) -> list[str]:
    import kernels

    return [kernels.get(n).name for n in names] if names else sorted(kernels.registry())


def _gpu_name(name: str) -> str:
    """A GPU as the store keys it: our short name, ``auto`` resolved, or the name given."""
    from kernels import gpu

    if name.strip().lower() == "auto":
        return gpu.running().spec.name
    return name.strip().lower() if name.strip().lower() in gpu.KNOWN_GPUS else name.strip()


def _run(args) -> int:
    start = time.monotonic()
    for flag in ("batch", "jobs", "trials", "d_model", "heads", "ffn", "conv_kernel"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if any(s < 1 for s in args.seq_lens):
        raise ValueError(f"--seq-lens must be positive, got {args.seq_lens}")
    from . import memo

    dev = memo.device()
    key = dev and memo.run_key({k: getattr(args, k) for k in MEMO_ARGS}, dev)
    if key and args.gpu.strip().lower() in ("auto", memo.gpu_name(dev)):
        rows = memo.lookup(args.db, key)
        if rows is not None:
            print(_table(rows))
            print(f"0 configs measured, 0 winners stored, {len(rows)} cached, 0 without a "
                  f"winner, {time.monotonic() - start:.1f} s (this run completed before, with "
                  f"the same arguments, GPU and sources: nothing to tune)")
            return 0
    from cache import StoreError, open_store

    from . import evaluate, run, space

    dims = [ModelDims(args.batch, s, args.d_model, args.heads, args.ffn, args.conv_kernel)
            for s in args.seq_lens]
    tasks = space.tasks(_kernel_names(args.kernels), args.dtype, dims)
    if args.impls:
        known = {t.impl for t in tasks}
        if set(args.impls) - known:
            raise ValueError(f"unknown implementations {sorted(set(args.impls) - known)} of "
                             f"the kernels asked for; they have {sorted(known)}")
        tasks = [t for t in tasks if t.impl in args.impls]
    if not tasks:
        raise ValueError(f"no kernel supports dtype {args.dtype}")
    trials = args.trials or (None if args.time_budget else space.DEFAULT_TRIALS)
    budget = space.Budget(trials, args.time_budget)
    settings = run.Settings(budget=budget, seed=args.seed, jobs=args.jobs,
                            timeout_s=args.timeout,
                            evaluator=args.evaluator or evaluate.DEFAULT_EVALUATOR,
                            progress=not args.no_progress)
    report = run.tune(tasks, args.gpu, open_store(args.db), settings)
    if key and not report.failed:
        try:
            memo.record(args.db, key, report.gpu, report.tuned + report.cached)
        except StoreError as e:   # the winners are stored; only the shortcut is lost
            print(f"autotune: warning: could not remember this run: {e}", file=sys.stderr)
    print(_table(report.tuned + report.cached))
    print(f"{report.measured} configs measured, {len(report.tuned)} winners stored, "
          f"{len(report.cached)} cached, {len(report.failed)} without a winner, "
          f"{report.seconds:.1f} s")
    return 1 if report.failed else 0


def _show(args) -> int:
    from cache import open_store

    names = _kernel_names(args.kernels)
    store = open_store(args.db)
    good, refused = store.check(_gpu_name(args.gpu) if args.gpu else None, names)
    print(_table(good) if good else f"no winners in {store.where}")
    for row, reason in refused:
        print(f"refused: {row.get('gpu')} {row.get('kernel')}/{row.get('impl')} "
              f"{row.get('bucket')}: {reason}")
    return 0


def _export(args) -> int:
    from cache import open_store
    from cache.winner import dumps

    gpu = _gpu_name(args.gpu)
    store = open_store(args.db)
    winners = store.winners(gpu, _kernel_names(args.kernels))
    if not winners:
        raise RuntimeError(f"no winners for {gpu} in {store.where}; tune first: "
                           f"autotune run --gpu {gpu}")
    text = dumps(winners, gpu)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"{len(winners)} winners for {gpu} written to {args.output}")
    else:
        print(text)
    return 0


def _plot(args) -> int:
    from cache import open_store

    from .plot import plot

    gpu = _gpu_name(args.gpu)
    store = open_store(args.db)
    paths = plot(store, gpu, _kernel_names(args.kernels), Path(args.out))
    if not paths:
        raise RuntimeError(f"no winners for {gpu} in {store.where}; nothing to plot")
    for path in paths:
        print(path)
    return 0


def _table(winners) -> str:
    """kernel x bucket -> config, time, speedup; '*' marks the fastest implementation."""
    from cache.models import bucket_key

    fastest = {}
    for w in winners:
        key = (w.gpu, w.kernel, w.dtype, bucket_key(w.bucket))
        if key not in fastest or w.median_us < fastest[key].median_us:
            fastest[key] = w
    head = ("gpu", "kernel", "impl", "dtype", "bucket", "config", "median us", "+-",
            "baseline us", "speedup", "trials")
    rows = [head]
    for w in sorted(winners, key=lambda w: (w.gpu, w.kernel, w.dtype,
                                            tuple(sorted(w.bucket.items())), w.impl)):
        best = fastest[(w.gpu, w.kernel, w.dtype, bucket_key(w.bucket))] is w
        rows.append((w.gpu, w.kernel, w.impl + ("*" if best else ""), w.dtype,
                     bucket_key(w.bucket), " ".join(f"{k}={v}" for k, v in w.config.items()),
                     f"{w.median_us:.2f}", f"{w.spread_us:.2f}",
                     "-" if w.baseline_us is None else f"{w.baseline_us:.2f}",
                     "-" if w.speedup is None else f"{w.speedup:.2f}x", str(w.trials)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(n) for c, n in zip(r, widths)).rstrip() for r in rows)


_COMMANDS = {"run": _run, "show": _show, "export": _export, "plot": _plot}

if __name__ == "__main__":
    sys.exit(main())
