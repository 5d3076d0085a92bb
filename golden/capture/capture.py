#!/usr/bin/env python3
"""Capture fusegate's PyTorch goldens at every rounding point of HF Qwen3's RMSNorm + QKV path.

The reference is transformers' own Qwen3RMSNorm module (never torch.nn.RMSNorm, never a
re-implementation) followed by F.linear on bf16 tensors, on the GPU the script runs on.

    python3 golden/capture/capture.py [--cases golden/capture/cases.json] [--out golden/data]
        [--only NAME ...] [--device cuda]

Writes <out>/weights/<name>.safetensors, <out>/cases/<name>.safetensors and <out>/manifest.json
(with each file's sha256). Exit 2 with one line when torch/transformers/CUDA are missing.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys

FORMAT_WEIGHTS = "fusegate-weights-v1"
FORMAT_CASE = "fusegate-case-v1"
FORMAT_MANIFEST = "fusegate-manifest-v1"


def die(msg):
    print(f"capture.py: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    import torch.nn.functional as F
except ImportError:
    die("python3 has no torch: goldens need torch + transformers + a CUDA GPU (see README, 'Regenerating goldens')")
try:
    import transformers
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
except ImportError:
    die("python3 has no transformers with Qwen3 (transformers >= 4.51 needed)")
from safetensors.torch import save_file


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cublas_version():
    """cuBLAS version of the library torch loaded, or 'unknown' (recorded, never guessed)."""
    import ctypes

    for name in ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.cublasLtGetVersion.restype = ctypes.c_size_t
            return str(lib.cublasLtGetVersion())
        except OSError:
            continue
    return "unknown"


def provenance(device):
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda or "none",
        "cublas": cublas_version() if device == "cuda" else "none",
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "python": platform.python_version(),
        "allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "captured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def gen(seed):
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def norm_weight(spec, n, g):
    """A norm weight vector from a spec: plain normal, or normal plus outliers at fixed channels."""
    v = torch.randn(n, generator=g) * spec["std"] + spec["mean"]
    if spec["kind"] == "outliers":
        v = v.abs()
        # Spread the outliers over the vector deterministically (first, middle, ...).
        for i, val in enumerate(spec["outliers"]):
            v[(i * 37 + 5) % n] = val
    elif spec["kind"] != "normal":
        raise ValueError(f"unknown norm weight kind {spec['kind']!r}")
    return v.to(torch.bfloat16)


def make_weights(spec):
    g = gen(spec["seed"])
    h, n = spec["h"], (spec["nq"] + 2 * spec["nkv"]) * spec["d"]
    return {
        "norm_weight": norm_weight(spec["norm"], h, g),
        "qkv_weight": (torch.randn(n, h, generator=g) * spec["qkv_std"]).to(torch.bfloat16),
        "q_norm_weight": norm_weight(spec["q_norm"], spec["d"], g),
        "k_norm_weight": norm_weight(spec["k_norm"], spec["d"], g),
    }


def make_x(spec, t, h, g):
    x = torch.randn(t, h, generator=g)
    kind = spec["kind"]
    if kind == "massive":
        # Massive activations: a few channels at +-hundreds in every row, as seen in real LLMs.
        for ch, mag in zip(spec["channels"], spec["magnitudes"]):
            x[:, ch] = mag * (1.0 + 0.05 * torch.randn(t, generator=g))
    elif kind == "scaled":
        assert spec["scale"] == "1/(2h)"
        x = x / (2 * h)
    elif kind == "nonfinite":
        for row, col, what in spec["cells"]:
            x[row, col] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[what]
    elif kind != "normal":
        raise ValueError(f"unknown x kind {kind!r}")
    return x.to(torch.bfloat16)


def hf_norm(weight, eps, device):
    """transformers' own Qwen3RMSNorm with the given weight."""
    m = Qwen3RMSNorm(weight.shape[0], eps=eps).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        m.weight.copy_(weight.to(device))
    return m


def capture_case(case, wspec, w, eps, device):
    t, h, nq, nkv, d = case["t"], wspec["h"], wspec["nq"], wspec["nkv"], wspec["d"]
    g = gen(case["seed"])
    x = make_x(case["x"], t, h, g).to(device)
    norm = hf_norm(w["norm_weight"], eps, device)
    with torch.no_grad():
        # The rounding points HF's forward passes through (inv_rms and A are internal to the module;
        # they are recomputed here with the same ops and checked against the module's output below).
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        a = (x32 * inv_rms).to(torch.bfloat16)
        b = norm(x)
        b_check = norm.weight * a
        same = (b.view(torch.int16) == b_check.view(torch.int16)) | (b.isnan() & b_check.isnan())
        if not bool(same.all()):
            die(f"{case['name']}: Qwen3RMSNorm output != bf16(w * A): HF semantics changed; update NUMERICS")
        qkv = F.linear(b, w["qkv_weight"].to(device))
        q, k, v = qkv.split([nq * d, nkv * d, nkv * d], dim=-1)
        q = q.reshape(t, nq, d).contiguous()
        k = k.reshape(t, nkv, d).contiguous()
        v = v.reshape(t, nkv, d).contiguous()
        q_normed = hf_norm(w["q_norm_weight"], eps, device)(q)
        k_normed = hf_norm(w["k_norm_weight"], eps, device)(k)
    return {
        "x": x,
        "inv_rms": inv_rms.reshape(t),
        "a": a,
        "b": b,
        "q": q,
        "k": k,
        "v": v,
        "q_normed": q_normed,
        "k_normed": k_normed,
    }


def cpu_tensors(d):
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--cases", default=os.path.join(here, "cases.json"))
    ap.add_argument("--out", default=os.path.join(here, "..", "data"))
    ap.add_argument("--manifest", default=None, help="default: <out>/manifest.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--only", nargs="*", default=None, help="capture only these cases (the manifest lists only them)")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        die("torch sees no CUDA device: goldens are captured on the GPU PyTorch runs on (or pass --device cpu for a dry run)")
    spec = json.load(open(args.cases))
    prov = provenance(args.device)
    os.makedirs(os.path.join(args.out, "weights"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "cases"), exist_ok=True)
    manifest = {"format": FORMAT_MANIFEST, "provenance": prov, "eps": args.eps, "weights": [], "cases": []}
    wspecs = {w["name"]: w for w in spec["weights"]}
    weights = {}
    for ws in spec["weights"]:
        w = make_weights(ws)
        weights[ws["name"]] = w
        rel = f"weights/{ws['name']}.safetensors"
        path = os.path.join(args.out, rel)
        save_file(cpu_tensors(w), path, metadata={"format": FORMAT_WEIGHTS, "spec": json.dumps(ws),
                                                   "provenance": json.dumps(prov)})
        manifest["weights"].append({"name": ws["name"], "file": rel, "sha256": sha256(path),
                                    "bytes": os.path.getsize(path)})
        print(f"weights {ws['name']}: {os.path.getsize(path)} bytes", flush=True)
    wsha = {w["name"]: w["sha256"] for w in manifest["weights"]}
    for case in spec["cases"]:
        if args.only is not None and case["name"] not in args.only:
            continue
        ws = wspecs[case["weights"]]
        tensors = capture_case(case, ws, weights[case["weights"]], args.eps, args.device)
        rel = f"cases/{case['name']}.safetensors"
        path = os.path.join(args.out, rel)
        full = dict(case, h=ws["h"], nq=ws["nq"], nkv=ws["nkv"], d=ws["d"], eps=args.eps)
        save_file(cpu_tensors(tensors), path, metadata={
            "format": FORMAT_CASE, "case": json.dumps(full), "weights_sha256": wsha[case["weights"]],
            "provenance": json.dumps(prov)})
        manifest["cases"].append({"name": case["name"], "file": rel, "sha256": sha256(path),
                                  "weights": case["weights"], "t": case["t"], "h": ws["h"], "nq": ws["nq"],
                                  "nkv": ws["nkv"], "d": ws["d"], "bytes": os.path.getsize(path)})
        print(f"case {case['name']}: {os.path.getsize(path)} bytes", flush=True)
    with open(args.manifest or os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(e["bytes"] for e in manifest["weights"] + manifest["cases"])
    print(f"wrote {len(manifest['cases'])} cases, {len(manifest['weights'])} weight sets, {total / 1e6:.1f} MB; "
          f"{json.dumps(prov)}")


if __name__ == "__main__":
    main()
