#!/usr/bin/env python3
"""PyTorch baselines for `cargo xtask bench`: HF Qwen3RMSNorm + F.linear, the alternatives a user has.

Graph-timed, by fusegate's own method (bench/src/gpu.rs), so their figures compare with fusegate's:
- cold L2: one CUDA graph of K calls over K *different* copies of the inputs and weights, K such
  that more than 3x L2 is read between two uses of a copy; hot L2: a graph of calls on one copy;
  a sample is one replay between CUDA events, divided by the calls it holds;
- every graph is checked before it is timed (its last output equals a direct call's, bit for bit);
- the median with a distribution-free 95% CI, until the CI is under 1% of the median or the budget
  ends; never timed on zeros.
Graph-timed: `torch-compile-graph` (torch.compile, default inductor), `hf-eager-graph` (HF's eager
modules) and `cublas-gemm-graph` (F.linear alone on a normalised input: the op minus its norm).
Each records its bit-exact fraction of q|k|v against HF's eager output on the same input.
Host-launched, without graphs (a flush, then one call between events; launch gaps can count):
`torch-eager` and `torch-compile`, kept as labelled columns only, never in a speedup.

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


def sample_until(one, target=0.01, min_samples=20, max_samples=2000, budget_s=2.0):
    """Samples `one()` (us) until the median's 95% CI is under `target` of it or the budget ends."""
    samples, t0 = [], time.monotonic()
    while True:
        samples.append(one())
        if len(samples) >= max_samples or time.monotonic() - t0 > budget_s:
            break
        if len(samples) >= min_samples:
            e = estimate(samples)
            if (e["ci_hi"] - e["ci_lo"]) / 2 / e["median"] < target:
                break
    return estimate(samples)


def event_us(enqueue, calls):
    """Device time of what `enqueue` puts on the stream, per call, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    enqueue()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / calls  # ms -> us per call


def measure(fn, cold, flush, budget_s=2.0, calls=20):
    """Cold: flush, then one call between events (the flush gives the host time to enqueue the
    call's kernels, so host launch gaps do not count). Hot: `calls` back-to-back calls between
    events, divided by `calls` (the host enqueues ahead of the device, as a serving loop does)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    n = 1 if cold else calls

    def one():
        if cold:
            flush.add_(1.0)  # reads and writes 2x L2: evicts the weights
        return event_us(lambda: [fn() for _ in range(n)], n)

    return sample_until(one, budget_s=budget_s)


def min_bytes(t, h, n):
    """Bytes the op must move at least (x, norm weight, W, q|k|v in bf16): the rotation's unit."""
    return 2 * (t * h + h + n * h + t * n)


def graph_sampler(fn, xs, ws, reps, check):
    """A checked graph of `reps` rounds of fn over every (x, w) copy; returns (replay, calls)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, w in zip(xs, ws):  # warm-up outside the capture (compiles, autotunes, allocates)
            fn(x, w)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [fn(x, w) for _ in range(reps) for x, w in zip(xs, ws)]
    # The check: fresh values in the last copy's x, replay, compare with a direct call.
    xs[-1].copy_(torch.randn_like(xs[-1], dtype=torch.float32).to(xs[-1].dtype))
    g.replay()
    torch.cuda.synchronize()
    if not torch.equal(outs[-1].view(torch.int16), fn(xs[-1], ws[-1]).view(torch.int16)):
        raise RuntimeError("graph replay differs from a direct call (a kernel left out of the capture?)")
    check.append(True)
    return g.replay, reps * len(xs)


def measure_graph(replay, calls, budget_s=2.0):
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    return sample_until(lambda: event_us(replay, calls), budget_s=budget_s)


def bit_exact(a, b):
    """Share of elements with the same bits (both bf16)."""
    return float((a.view(torch.int16) == b.view(torch.int16)).float().mean())


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

    def hf(x, w):
        return F.linear(norm(x), w)

    def gemm_alone(b, w):
        return F.linear(b, w)

    note = None
    compiled = None
    torch._dynamo.config.cache_size_limit = 64  # one compile per T, never a silent fallback to eager
    if a.compile == "yes":
        try:
            compiled = torch.compile(hf, dynamic=False)
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            note = f"torch.compile unavailable: {e}"
    out = []
    for t in [int(v) for v in a.tokens.split(",")]:
        x = torch.randn(t, h, device=dev).to(torch.bfloat16)
        with torch.no_grad():
            reference = hf(x, w)  # HF's eager output: what bit-exactness is measured against
            b = norm(x)
        # Host-launched, without graphs: labelled columns, never in a speedup.
        host = [("torch-eager", lambda: hf(x, w))]
        if compiled is not None:
            host.append(("torch-compile", lambda: compiled(x, w)))
        for name, fn in host:
            try:
                with torch.no_grad():
                    for cache in a.caches.split(","):
                        est = measure(fn, cache == "cold", flush, budget_s=a.budget)
                        out.append({"name": name, "t": t, "cache": cache, "time_us": est})
                        print(f"{name} T={t} {cache}: {est['median']:.2f} us", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001
                note = f"{name} failed at T={t}: {e}"
        # Graph-timed: the same method as fusegate's kernels.
        graphed = [("hf-eager-graph", hf, x), ("cublas-gemm-graph", gemm_alone, b)]
        if compiled is not None:
            graphed.insert(0, ("torch-compile-graph", compiled, x))
        for name, fn, first in graphed:
            try:
                with torch.no_grad():
                    exact = bit_exact(fn(first, w), reference)
                    for cache in a.caches.split(","):
                        k = 1 if cache == "hot" else min(64, -(-3 * l2 // min_bytes(t, h, n)) + 1)
                        xs = [first.clone() for _ in range(k)]
                        ws = [w.clone() for _ in range(k)]
                        reps = 1
                        if cache == "hot":
                            one = measure_graph(*graph_sampler(fn, xs, ws, 1, []), budget_s=0.05)["median"]
                            reps = max(1, min(64, math.ceil(100.0 / max(one, 1.0))))
                        checked = []
                        replay, calls = graph_sampler(fn, xs, ws, reps, checked)
                        est = measure_graph(replay, calls, budget_s=a.budget)
                        out.append({"name": name, "t": t, "cache": cache, "time_us": est,
                                    "bit_exact_vs_hf": exact, "graph_checked": bool(checked)})
                        print(f"{name} T={t} {cache}: {est['median']:.2f} us, {100 * exact:.1f}% bit-exact vs HF",
                              file=sys.stderr, flush=True)
                        del xs, ws
            except Exception as e:  # noqa: BLE001
                note = f"{name} failed at T={t}: {e}"
    with open(a.out, "w") as f:
        json.dump({"baselines": out, "note": note, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
