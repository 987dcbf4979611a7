"""Markdown tables from a pytest-benchmark JSON written by ``pytest -m bench --benchmark-json``.

    python scripts/bench_report.py bench.json [more.json ...] [--out bench.md]
    python scripts/bench_report.py --compare before.json after.json     # A/B, one line each

One table per benchmark group (a kernel and shape): every implementation's median µs per call
(recorded by tests/bench/conftest.py's ``measure``), the ratio to the fastest baseline in the
group (how many times faster the candidate is), GB/s and TFLOP/s from the kernel's cost, and the
fractions of the copy bandwidth and the fp16 matmul rate measured in the same run. With
``--compare``, one table of the benchmarks two runs share: µs per call in each, after / before.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def _rows(doc: dict) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for b in doc.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "per_call_us" not in info:
            continue
        groups[b.get("group") or b["name"]].append({"name": b["name"], **info})
    return groups


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def report(doc: dict) -> str:
    groups = _rows(doc)
    if not groups:
        raise ValueError("no benchmark in this file recorded per_call_us (was it written by "
                         "`pytest -m bench tests/bench --benchmark-json=…`?)")
    first = next(r for rows in groups.values() for r in rows if "copy_gbps" in r)
    machine = doc.get("machine_info", {})
    out = [f"GPU {first.get('gpu', '?')}, torch {first.get('torch', '?')}, "
           f"{doc.get('datetime', '?')[:10]}, Python {machine.get('python_version', '?')}. "
           f"Ceilings measured in the run: copy {first['copy_gbps']:.0f} GB/s, "
           f"dense fp16 matmul {first['fp16_tflops']:.0f} TFLOP/s.", ""]
    for group, rows in groups.items():
        baselines = [r["per_call_us"] for r in rows if r.get("role") != "candidate"
                     and not str(r.get("role")).startswith(("speed of light", "reference"))]
        base = min(baselines) if baselines else None
        out += [f"### {group}", "",
                "| impl | role | µs per call | faster than best baseline | GB/s | of copy BW "
                "| TFLOP/s | of fp16 peak | config |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(rows, key=lambda r: r["per_call_us"]):
            ratio = None if base is None else base / r["per_call_us"]
            config = r.get("config")
            config = " ".join(f"{k}={v}" for k, v in config.items()) if isinstance(config, dict) \
                else (config or "")
            if r.get("config_source"):
                config = f"{config} ({r['config_source']})"
            role = r.get("role", "") + (" (no graph)" if r.get("timing", "").startswith("host") else "")
            rates = (f"{r['gbps']:.0f} | {r['frac_copy_bw']:.2f} | {r['tflops']:.1f} "
                     f"| {r['frac_fp16_peak']:.2f}") if "gbps" in r else "— | — | — | —"
            out.append(f"| {r.get('impl', r.get('path', r['name']))} | {role} "
                       f"| {r['per_call_us']:.2f} | {_fmt(ratio, '.2f')}x | {rates} | {config} |")
        out.append("")
    return "\n".join(out)


def compare(before: dict, after: dict) -> str:
    a = {(g, r["name"]): r for g, rows in _rows(before).items() for r in rows}
    b = {(g, r["name"]): r for g, rows in _rows(after).items() for r in rows}
    shared = [key for key in a if key in b]
    if not shared:
        raise ValueError("the two runs share no benchmark")
    out = ["| benchmark | before µs | after µs | after / before | after, of copy BW |",
           "|---|---:|---:|---:|---:|"]
    for key in shared:
        x, y = a[key]["per_call_us"], b[key]["per_call_us"]
        frac = _fmt(b[key].get("frac_copy_bw"), ".2f")
        out.append(f"| {key[1]} | {x:.2f} | {y:.2f} | {y / x:.3f} | {frac} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="+")
    p.add_argument("--out", type=Path, help="write here instead of standard output")
    p.add_argument("--compare", action="store_true",
                   help="two JSON files, before and after: one A/B table")
    args = p.parse_args(argv)
    if args.compare and len(args.json) != 2:
        p.error("--compare takes exactly two JSON files")
    try:
        docs = [json.loads(path.read_text()) for path in args.json]
        text = compare(*docs) if args.compare else "\n".join(report(d) for d in docs)
    except (OSError, ValueError, KeyError) as e:
        print(f"bench_report: {e}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
