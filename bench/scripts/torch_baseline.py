#!/usr/bin/env python3
"""PyTorch baselines for `cargo xtask bench`: HF Qwen3RMSNorm + F.linear, eager and torch.compile.

Same method as fusegate's own sampler: device time from CUDA events, warm-up first, cold L2 (a
write of a buffer twice the device's L2 before each timed call) and hot L2 reported apart, the
median with a distribution-free 95% CI, stopping when the CI is under 1% of the median or the
budget ends. Never timed on zeros.

    python3 torch_baseline.py --tokens 1,8,32 --caches cold,hot --out baselines.json

Writes {"baselines": [...], "note": null | "why some are missing"}. Exit 2 when torch/CUDA is absent.
"""

import argparse
import json
import math
import sys
import time


def die(msg):
    print(f"torch_baseline.py: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
except ImportError as e:
    die(f"needs torch and transformers ({e})")


def estimate(samples):
    s = sorted(samples)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half))
    return {"median": median, "ci_lo": s[lo], "ci_hi": s[hi], "samples": n}


def measure(fn, cold, flush, target=0.01, min_samples=20, max_samples=2000, budget_s=2.0, calls=20):
    """Cold: flush, then one call between events (the flush gives the host time to enqueue the
    call's kernels, so host launch gaps do not count). Hot: `calls` back-to-back calls between
    events, divided by `calls` (the host enqueues ahead of the device, as a serving loop does)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples, t0 = [], time.monotonic()
    while True:
        n = 1 if cold else calls
        if cold:
            flush.add_(1.0)  # reads and writes 2x L2: evicts the weights
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / n)  # ms -> us per call
        if len(samples) >= max_samples or time.monotonic() - t0 > budget_s:
            break
        if len(samples) >= min_samples:
            e = estimate(samples)
            if (e["ci_hi"] - e["ci_lo"]) / 2 / e["median"] < target:
                break
    return estimate(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1,8,32,128,512,2048,8192")
    ap.add_argument("--caches", default="cold,hot")
    ap.add_argument("--h", type=int, default=1024)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--compile", default="yes", choices=["yes", "no"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        die("torch sees no CUDA device")
    dev = "cuda"
    torch.manual_seed(7)
    h, n = a.h, a.n
    norm = Qwen3RMSNorm(h, eps=1e-6).to(dev, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(h, device=dev))
    w = (0.02 * torch.randn(n, h, device=dev)).to(torch.bfloat16)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.randn(max(2 * l2, 1 << 26) // 4, device=dev)

    def eager(x):
        return F.linear(norm(x), w)

    variants = [("torch-eager", eager)]
    note = None
    if a.compile == "yes":
        try:
            compiled = torch.compile(eager, dynamic=False)
            variants.append(("torch-compile", compiled))
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            note = f"torch.compile unavailable: {e}"
    out = []
    for t in [int(v) for v in a.tokens.split(",")]:
        x = torch.randn(t, h, device=dev).to(torch.bfloat16)
        for name, fn in variants:
            try:
                with torch.no_grad():
                    for cache in a.caches.split(","):
                        est = measure(lambda: fn(x), cache == "cold", flush, budget_s=a.budget)
                        out.append({"name": name, "t": t, "cache": cache, "time_us": est})
                        print(f"{name} T={t} {cache}: {est['median']:.2f} us", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001
                note = f"{name} failed at T={t}: {e}"
    with open(a.out, "w") as f:
        json.dump({"baselines": out, "note": note, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
