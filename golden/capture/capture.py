#!/usr/bin/env python3
"""Capture fusegate's PyTorch goldens at every rounding point of HF Qwen3's RMSNorm + QKV path.

The reference is transformers' own Qwen3RMSNorm module (never torch.nn.RMSNorm, never a
re-implementation) followed by F.linear on bf16 tensors, on the GPU the script runs on.

    python3 golden/capture/capture.py [--cases golden/capture/cases.json] [--out golden/data]
        [--only NAME ...] [--device cuda]
    python3 golden/capture/capture.py --shape h=4096,nq=2,nkv=1,d=64,t=7 [--x heavy] [--seed N]
        [--out target/fusegate/golden]

Writes <out>/weights/<name>.safetensors, <out>/cases/<name>.safetensors and <out>/manifest.json
(with each file's sha256). `--only` and `--shape` add to an existing manifest at <out> (replacing
entries of the same name; weight files already there with the same spec are kept byte for byte),
so adding a case never rewrites the others. `--shape` captures one case of any layer shape, for a
user's own model: check it with `cargo xtask conform --golden <out>`.
Exit 2 with one line when torch/transformers/CUDA are missing or an argument is bad.
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
    elif kind == "rows":
        # Rows across bf16's range: row i is normal noise times scales[i] (rows past the list stay
        # normal). 1e-30: the fp32 sum of squares underflows to 0, so inv_rms = rsqrt(eps); 1e-39:
        # bf16 subnormals; 1e20: x^2 overflows fp32, so inv_rms = 0 and the row normalises to 0.
        for i, scale in enumerate(spec["scales"][:t]):
            x[i] = x[i] * scale
    elif kind == "heavy":
        # Student's t with `df` degrees of freedom (df = 2: infinite variance), from the seeded
        # generator: z / sqrt(chi2_df / df), chi2_2 = -2 ln(u).
        assert spec["df"] == 2, "heavy: only df = 2 is generated"
        u = torch.rand(t, h, generator=g).clamp_min(1e-30)
        x = x / torch.sqrt(-torch.log(u))
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


def load_manifest(path, prov, eps):
    """The manifest already at `path` to add to (or a new one); refuses one captured elsewhere."""
    fresh = {"format": FORMAT_MANIFEST, "provenance": prov, "eps": eps, "weights": [], "cases": []}
    if not os.path.exists(path):
        return fresh
    try:
        old = json.load(open(path))
    except (OSError, ValueError) as e:
        die(f"{path}: not a readable manifest ({e}); capture into an empty --out")
    same = lambda p: {k: v for k, v in p.items() if k != "captured_at"}
    if old.get("format") != FORMAT_MANIFEST or old.get("eps") != eps or same(old.get("provenance", {})) != same(prov):
        die(f"{path}: captured on another stack or eps ({old.get('provenance')}); adding cases captured here "
            "would mix stacks: capture every case again (no --only) or use another --out")
    return old


def replace_entry(entries, new):
    """`entries` with `new` in place of the entry of the same name (appended if none)."""
    for i, e in enumerate(entries):
        if e["name"] == new["name"]:
            entries[i] = new
            return
    entries.append(new)


def existing_weights(path, ws):
    """The weight tensors already at `path` when they were captured from the same spec, else None."""
    if not os.path.exists(path):
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_WEIGHTS or json.loads(meta.get("spec", "null")) != ws:
        return None
    return load_file(path)


def shape_spec(text, x_kind, seed):
    """cases.json-style specs (one weight set, one case) for `--shape h=..,nq=..,nkv=..,d=..,t=..`."""
    try:
        dims = dict(kv.split("=", 1) for kv in text.split(","))
        dims = {k.strip(): int(v) for k, v in dims.items()}
    except ValueError:
        die(f"--shape {text!r}: expected h=H,nq=NQ,nkv=NKV,d=D,t=T (positive integers)")
    want = ["h", "nq", "nkv", "d", "t"]
    if sorted(dims) != sorted(want) or min(dims.values()) <= 0:
        die(f"--shape {text!r}: expected exactly h, nq, nkv, d and t, each a positive integer")
    if dims["nq"] % dims["nkv"] != 0:
        die(f"--shape {text!r}: nq must be a multiple of nkv (grouped-query attention)")
    tag = "h{h}-nq{nq}-nkv{nkv}-d{d}".format(**dims)
    unit = {"kind": "normal", "mean": 1.0, "std": 0.1}
    weights = {"name": f"shape-{tag}", "h": dims["h"], "nq": dims["nq"], "nkv": dims["nkv"], "d": dims["d"],
               "seed": seed, "norm": unit, "qkv_std": round(dims["h"] ** -0.5, 6), "q_norm": unit, "k_norm": unit}
    x = {"kind": x_kind} if x_kind != "heavy" else {"kind": "heavy", "df": 2}
    case = {"name": f"shape-{tag}-t{dims['t']}-{x_kind}", "weights": weights["name"], "t": dims["t"],
            "seed": seed + 1, "x": x}
    return {"weights": [weights], "cases": [case]}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--cases", default=os.path.join(here, "cases.json"))
    ap.add_argument("--out", default=None, help="default: golden/data (with --shape: target/fusegate/golden)")
    ap.add_argument("--manifest", default=None, help="default: <out>/manifest.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--only", nargs="*", default=None,
                    help="capture only these cases, added to the manifest at <out> (the others are kept)")
    ap.add_argument("--shape", default=None, help="capture one case of this shape: h=H,nq=NQ,nkv=NKV,d=D,t=T")
    ap.add_argument("--x", default="normal", choices=["normal", "heavy"], help="with --shape: the activations")
    ap.add_argument("--seed", type=int, default=7001, help="with --shape: the seed of weights (and of x, +1)")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        die("torch sees no CUDA device: goldens are captured on the GPU PyTorch runs on (or pass --device cpu for a dry run)")
    if args.shape is not None:
        if args.only is not None:
            die("--shape and --only: pick one (--shape captures its own one case)")
        spec = shape_spec(args.shape, args.x, args.seed)
        args.only = [spec["cases"][0]["name"]]
        out = args.out or os.path.join(here, "..", "..", "target", "fusegate", "golden")
    else:
        try:
            spec = json.load(open(args.cases))
        except (OSError, ValueError) as e:
            die(f"{args.cases}: {e}")
        out = args.out or os.path.join(here, "..", "data")
        unknown = sorted(set(args.only or []) - {c["name"] for c in spec["cases"]})
        if unknown:
            die(f"--only: no case named {', '.join(unknown)} in {args.cases}")
    prov = provenance(args.device)
    manifest_path = args.manifest or os.path.join(out, "manifest.json")
    os.makedirs(os.path.join(out, "weights"), exist_ok=True)
    os.makedirs(os.path.join(out, "cases"), exist_ok=True)
    # A full capture starts a new manifest; --only and --shape add to the one there.
    if args.only is None:
        manifest = {"format": FORMAT_MANIFEST, "provenance": prov, "eps": args.eps, "weights": [], "cases": []}
    else:
        manifest = load_manifest(manifest_path, prov, args.eps)
    cases = [c for c in spec["cases"] if args.only is None or c["name"] in args.only]
    needed = {c["weights"] for c in cases}
    wspecs = {w["name"]: w for w in spec["weights"]}
    weights = {}
    for ws in spec["weights"]:
        if ws["name"] not in needed and args.only is not None:
            continue
        rel = f"weights/{ws['name']}.safetensors"
        path = os.path.join(out, rel)
        kept = existing_weights(path, ws) if args.only is not None else None
        if kept is not None:
            weights[ws["name"]] = kept
            print(f"weights {ws['name']}: kept ({os.path.getsize(path)} bytes)", flush=True)
        else:
            w = make_weights(ws)
            weights[ws["name"]] = w
            save_file(cpu_tensors(w), path, metadata={"format": FORMAT_WEIGHTS, "spec": json.dumps(ws),
                                                       "provenance": json.dumps(prov)})
            print(f"weights {ws['name']}: {os.path.getsize(path)} bytes", flush=True)
        replace_entry(manifest["weights"], {"name": ws["name"], "file": rel, "sha256": sha256(path),
                                            "bytes": os.path.getsize(path)})
    wsha = {w["name"]: w["sha256"] for w in manifest["weights"]}
    for case in cases:
        ws = wspecs[case["weights"]]
        tensors = capture_case(case, ws, weights[case["weights"]], args.eps, args.device)
        rel = f"cases/{case['name']}.safetensors"
        path = os.path.join(out, rel)
        full = dict(case, h=ws["h"], nq=ws["nq"], nkv=ws["nkv"], d=ws["d"], eps=args.eps)
        save_file(cpu_tensors(tensors), path, metadata={
            "format": FORMAT_CASE, "case": json.dumps(full), "weights_sha256": wsha[case["weights"]],
            "provenance": json.dumps(prov)})
        replace_entry(manifest["cases"], {"name": case["name"], "file": rel, "sha256": sha256(path),
                                          "weights": case["weights"], "t": case["t"], "h": ws["h"], "nq": ws["nq"],
                                          "nkv": ws["nkv"], "d": ws["d"], "bytes": os.path.getsize(path)})
        print(f"case {case['name']}: {os.path.getsize(path)} bytes", flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(e["bytes"] for e in manifest["weights"] + manifest["cases"])
    print(f"wrote {len(cases)} cases; the manifest lists {len(manifest['cases'])} cases, "
          f"{len(manifest['weights'])} weight sets, {total / 1e6:.1f} MB; {json.dumps(prov)}")
    if args.shape is not None:
        print(f"check it: cargo xtask conform --golden {out}")


if __name__ == "__main__":
    main()
