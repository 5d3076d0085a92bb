#!/usr/bin/env python3
"""Record an engine dump (the format of model/src/dump/mod.rs) from any torch HF-style Qwen3 model,
for `cargo xtask model-check --dumps DIR --golden GOLDEN`.

Forward hooks only: an engine written in PyTorch with HF's module names needs no changes.
  layers.{l}.input_norm   output of model.layers.{l}.input_layernorm
  layers.{l}.q / .k       output of self_attn.q_norm / self_attn.k_norm  ([.., T, heads, d] -> [T, heads*d])
  layers.{l}.v            output of self_attn.v_proj
  layers.{l}.attention    input of self_attn.o_proj (forward pre-hook)
  layers.{l}.output       output of model.layers.{l} (first element when a tuple)
  layers.{l}.q_rope/k_rope  only where the attention module's Python module has a module-level
                          apply_rotary_pos_emb (HF's modeling_qwen3 does): it is wrapped to record its
                          outputs ([B, heads, T, d] -> [T, heads*d]); otherwise they are not dumped
                          (model-check reports them as skipped, never guessed)
  logits                  the model output's logits
Rows are positions in order: with --decode the prompt goes one token at a time through the KV cache
and each step's rows are appended. Batch 1 only.

It has not been run in fusegate's CI (no torch there); fusegate's own dumps (model/src/dump/record.rs)
are what the tests check. Usage:
  python3 golden/capture/dump_torch.py --model CHECKPOINT_DIR --golden golden/model/stable-l4 --out DUMP_DIR [--decode]
"""
import argparse
import importlib
import json
import os

import torch
from safetensors.torch import save_file


def flat(t, heads_first):
    t = t[0] if isinstance(t, tuple) else t
    t = t.detach()
    if t.dim() == 4 and heads_first:  # [B, heads, T, d]
        t = t.transpose(1, 2)
    t = t[0]  # batch 1
    return t.reshape(t.shape[0], -1).to(torch.bfloat16).cpu().contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="checkpoint dir (or any model transformers loads)")
    ap.add_argument("--golden", required=True, help="model golden dir: its manifest's prompt ids are used")
    ap.add_argument("--out", required=True)
    ap.add_argument("--decode", action="store_true", help="one token at a time through the KV cache")
    ap.add_argument("--attn", default="eager")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16, attn_implementation=args.attn)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    dev = next(model.parameters()).device
    prompts = json.load(open(os.path.join(args.golden, "manifest.json")))["prompts"]
    layers = model.model.layers
    rec = {}

    def put(name, t, heads_first=False):
        rec.setdefault(name, []).append(flat(t, heads_first))

    for i, layer in enumerate(layers):
        a = layer.self_attn
        layer.input_layernorm.register_forward_hook(lambda m, inp, out, i=i: put(f"layers.{i}.input_norm", out))
        a.q_norm.register_forward_hook(lambda m, inp, out, i=i: put(f"layers.{i}.q", out))
        a.k_norm.register_forward_hook(lambda m, inp, out, i=i: put(f"layers.{i}.k", out))
        a.v_proj.register_forward_hook(lambda m, inp, out, i=i: put(f"layers.{i}.v", out))
        a.o_proj.register_forward_pre_hook(lambda m, inp, i=i: put(f"layers.{i}.attention", inp[0]))
        layer.register_forward_hook(lambda m, inp, out, i=i: put(f"layers.{i}.output", out))

    # RoPE is a function, not a module: wrap it where the attention's module defines it.
    current = {"layer": None}
    mod = importlib.import_module(type(layers[0].self_attn).__module__)
    if hasattr(mod, "apply_rotary_pos_emb"):
        original = mod.apply_rotary_pos_emb

        def wrapped(q, k, *a, **kw):
            qr, kr = original(q, k, *a, **kw)
            put(f"layers.{current['layer']}.q_rope", qr, heads_first=True)
            put(f"layers.{current['layer']}.k_rope", kr, heads_first=True)
            return qr, kr

        mod.apply_rotary_pos_emb = wrapped
        for i, layer in enumerate(layers):
            layer.self_attn.register_forward_pre_hook(lambda m, inp, i=i: current.__setitem__("layer", i))

    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            rec.clear()
            ids = torch.tensor([prompt["ids"]], device=dev)
            logits = []
            if args.decode:
                past = None
                for t in range(ids.shape[1]):
                    out = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits.append(flat(out.logits, False))
            else:
                logits.append(flat(model(ids, use_cache=False).logits, False))
            tensors = {name: torch.cat(parts) for name, parts in rec.items()}
            tensors["logits"] = torch.cat(logits)
            tensors["input_ids"] = ids[0].to(torch.int32).cpu()
            save_file(tensors, os.path.join(args.out, f"p{p}.safetensors"), metadata={"format": "fusegate-dump"})
            print(f"p{p}: {len(prompt['ids'])} tokens, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
