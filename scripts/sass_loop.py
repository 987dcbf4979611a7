"""Where a CUDA kernel's main loop spends its instructions, without a GPU: the SASS (NVRTC +
cuobjdump, tests/sass.py) of one config, its registers and stack, and the largest loop that holds
tensor-core instructions (HMMA, HGMMA), whole and cut at its branches, by opcode. A static count:
each region runs as often as its branch takes it (the masked path of an attention's last block,
the slow path of an edge block's copies), so compare regions, not just totals.

    python3 scripts/sass_loop.py relpos_attention cuda --shape '{"T": 500}' \\
        [--config '{"BN": 64, ...}'] [--arch sm_90] [--dtype float16] [--top 12]

--shape overrides the kernel's first tune shape; --config defaults to the impl's heuristic.
"""
import argparse
import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from kernels import gpu  # noqa: E402
from kernels.contract import ModelDims  # noqa: E402
from tests.sass import sass_of  # noqa: E402

LINE = re.compile(r"/\*([0-9a-f]{4,6})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)")


def instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, line) of every instruction."""
    out = []
    for line in sass.splitlines():
        m = LINE.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2), line.strip()))
    return out


def main_loop(instrs):
    """The longest backward branch's body that holds an MMA."""
    best = []
    for addr, op, line in instrs:
        m = re.search(r"BRA (0x[0-9a-f]+)", line)
        if op == "BRA" and m and int(m.group(1), 16) < addr:
            body = [i for i in instrs if int(m.group(1), 16) <= i[0] <= addr]
            if any(o in ("HMMA", "HGMMA") for _, o, _ in body) and len(body) > len(best):
                best = body
    return best


def regions(body):
    """The loop cut before every branch target and after every branch."""
    cuts = {body[0][0], body[-1][0] + 16}
    for addr, op, line in body:
        m = re.search(r"BRA (?:\S+, )?(0x[0-9a-f]+)", line)
        if op == "BRA":
            cuts.add(addr + 16)
            if m and body[0][0] <= int(m.group(1), 16) <= body[-1][0]:
                cuts.add(int(m.group(1), 16))
    edges = sorted(cuts)
    return [[i for i in body if a <= i[0] < b] for a, b in zip(edges, edges[1:])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel")
    ap.add_argument("impl")
    ap.add_argument("--shape", default="{}", help="JSON overrides of the kernel's first tune shape")
    ap.add_argument("--config", help="JSON config (default: the impl's heuristic)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    k = kernels.get(args.kernel)
    impl = k.impl(args.impl)
    shape = {**k.tune_shapes(ModelDims())[0], **json.loads(args.shape)}
    spec = gpu.by_name("h100") if args.arch.startswith("sm_90") else None
    config = json.loads(args.config) if args.config else impl.heuristic(shape, args.dtype, spec)
    why = impl.valid(config, shape, args.dtype, spec)
    if why:
        raise SystemExit(f"invalid config {config} at {shape}: {why}")
    usage = sass_of(args.kernel, args.impl, config, shape, args.dtype, args.arch, flag="-res-usage")
    body = main_loop(instructions(sass_of(args.kernel, args.impl, config, shape, args.dtype, args.arch)))
    print(f"{args.kernel}/{args.impl} {config} at {shape}, {args.arch}: "
          + " ".join(re.findall(r"REG:\d+|STACK:\d+|LOCAL:\d+", usage)))
    if not body:
        raise SystemExit("no loop with a tensor-core instruction")
    count = collections.Counter(op for _, op, _ in body)
    print(f"main loop: {len(body)} instructions: {count.most_common(args.top)}")
    for part in regions(body):
        ops = collections.Counter(op for _, op, _ in part)
        print(f"  {part[0][0]:#07x}-{part[-1][0]:#07x} {len(part):5d}: {ops.most_common(6)}")


if __name__ == "__main__":
    main()
