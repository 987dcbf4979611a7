"""Where the encoder's time goes: GPU time per kernel of one forward of issue 8's encoder
(12 layers, d=256, 4 heads, FFN 1024, kernel 31, fp16, B=32, T=500, full lengths), from
torch.profiler over a few forwards of the eager back end launched from the host (each kernel's
own duration; the host-side gaps between them are left out), beside the CUDA-graph replay's
time per forward (``kernels.timing.bench_graph``).

    python3 scripts/encoder_profile.py [--pos rel|abs] [--forwards 5]
"""
import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from conformer import ConformerConfig, ConformerEncoder
from conformer.eager import EagerEncoder
from kernels import timing
from tests.test_conformer_reference import _randomize

B, T = 32, 500
SIZE = dict(input_dim=256, d_model=256, num_heads=4, ffn_dim=1024, num_layers=12,
            conv_kernel_size=31, subsampling=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pos", choices=("rel", "abs"), default="rel")
    ap.add_argument("--forwards", type=int, default=5)
    args = ap.parse_args()
    extra = dict(pos_enc="rel") if args.pos == "rel" else dict(pos_enc="abs", final_norm=False)
    ref = _randomize(ConformerEncoder(ConformerConfig(**SIZE, **extra)), seed=1)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.3)
    enc = EagerEncoder(ref.cuda(), torch.float16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    feats = torch.randn(B, T, 256, device="cuda", generator=gen, dtype=torch.float16)
    lengths = torch.full((B,), T, device="cuda", dtype=torch.int32)
    with torch.no_grad():
        graph_us = timing.bench_graph([lambda: enc(feats, lengths)], reps=15).median_us
        for _ in range(2):
            enc(feats, lengths)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.forwards):
                enc(feats, lengths)
            torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            per_kernel[e.name][0] += e.device_time_total / args.forwards
            per_kernel[e.name][1] += 1
    total = sum(us for us, _ in per_kernel.values())
    print(f"{args.pos}-pos encoder, B={B} T={T}: CUDA graph {graph_us:.1f} us per forward; "
          f"kernels {total:.1f} us per forward (sum of durations)")
    print(f"| kernel | launches per forward | us per forward | share |\n|---|---:|---:|---:|")
    for name, (us, n) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0]):
        print(f"| {name[:90]} | {n // args.forwards} | {us:.1f} | {us / total:.3f} |")


if __name__ == "__main__":
    main()
