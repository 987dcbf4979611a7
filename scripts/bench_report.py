"""Markdown tables from a pytest-benchmark JSON written by ``pytest -m bench --benchmark-json``.

    python scripts/bench_report.py bench.json [more.json ...] [--out bench.md]

One table per benchmark group (a kernel and shape): every implementation's median µs per call
(recorded by tests/bench/conftest.py's ``measure``), the ratio to the fastest baseline in the
group (how many times faster the candidate is), GB/s and TFLOP/s from the kernel's cost, and the
fractions of the copy bandwidth and the fp16 matmul rate measured in the same run.
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
                     and "speed of light" not in str(r.get("role"))]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="+")
    p.add_argument("--out", type=Path, help="write here instead of standard output")
    args = p.parse_args(argv)
    texts = []
    for path in args.json:
        try:
            texts.append(report(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError) as e:
            print(f"bench_report: {path}: {e}", file=sys.stderr)
            return 2
    text = "\n".join(texts)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
