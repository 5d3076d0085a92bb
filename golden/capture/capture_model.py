#!/usr/bin/env python3
"""HF model goldens for fusegate's model gate (a GPU with torch and transformers).

Loads a Qwen3 checkpoint directory (any HF one, or one written by `fusegate synth-model`) with
Qwen3ForCausalLM in bf16, tokenizes the committed prompts with the checkpoint's tokenizer.json,
and records, per run and prompt:

  p{i}.layer{l}    every decoder layer's output [T, H] bf16 (forward hooks; output_hidden_states'
                   last entry is after the final norm, so it is not used)
  p{i}.topk_ids    the reference run's top-K token ids per position [T, K] int32
  p{i}.topk_logits this run's logits at those ids [T, K] bf16 (HF's logits are bf16: nothing lost)
  p{i}.lse         logsumexp of this run's whole logit row, in fp32 [T]
  p{i}.next_logit  the logit of the prompt's next token at each position [T - 1] bf16
  p{i}.argmax      this run's top-1 token per position [T] int32
  p{i}.greedy      greedy continuation, N tokens [N] int32 (runs that generate)
  p{i}.greedy_topk_ids, p{i}.greedy_topk_logits
                   the reference's top-8 tokens and logits at each greedy step [N, 8] (how close a
                   divergent step was to a tie)

Runs: `reference` (eager attention, batch 1, one prefill per prompt; greedy through the KV cache)
and HF's own noise floor, captured the same way: `floor-batch` (all prompts in one right-padded
batch), `floor-sdpa` (sdpa attention; its greedy through the cache), `floor-decode` (the prompt
fed one token at a time through the KV cache; its greedy re-prefills every step, no cache).

Writes OUT/manifest.json (provenance, prompts with their ids, runs, files with sha256) and
OUT/<run>.safetensors. Usage:
  capture_model.py --checkpoint DIR --prompts golden/model/prompts.json --out DIR
                   [--synth STYLE,LAYERS,SEED] [--greedy 32] [--topk 64]
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import Qwen3ForCausalLM

FORMAT = "fusegate-model-golden-v2"
GREEDY_TOPK = 8
RUNS = {
    "reference": "eager attention, batch 1, one prefill per prompt; greedy through the KV cache",
    "floor-batch": "eager attention, every prompt in one right-padded batch",
    "floor-sdpa": "sdpa attention, batch 1; greedy through the KV cache",
    "floor-decode": "eager attention, the prompt one token at a time through the KV cache; greedy re-prefills every step",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(ckpt, attn):
    try:
        m = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16, attn_implementation=attn)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        m = Qwen3ForCausalLM.from_pretrained(ckpt, torch_dtype=torch.bfloat16, attn_implementation=attn)
    return m.cuda().eval()


class Hooks:
    """Collects every decoder layer's output on each forward call."""

    def __init__(self, model):
        self.calls = []
        self.handles = [l.register_forward_hook(self._hook(i)) for i, l in enumerate(model.model.layers)]
        self.n = len(model.model.layers)

    def _hook(self, i):
        def f(_mod, _inp, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            if i == 0:
                self.calls.append([None] * self.n)
            self.calls[-1][i] = h.detach()
        return f

    def take(self):
        calls, self.calls = self.calls, []
        return calls


@torch.no_grad()
def prefill(model, hooks, ids):
    out = model(torch.tensor([ids], device="cuda"), use_cache=False)
    (layers,) = hooks.take()
    return [h[0] for h in layers], out.logits[0]


@torch.no_grad()
def batched(model, hooks, prompts):
    t_max = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), t_max), dtype=torch.long, device="cuda")
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
        mask[b, : len(p)] = 1
    out = model(ids, attention_mask=mask, use_cache=False)
    (layers,) = hooks.take()
    return [([h[b, : len(p)] for h in layers], out.logits[b, : len(p)]) for b, p in enumerate(prompts)]


@torch.no_grad()
def one_by_one(model, hooks, ids):
    past, rows, per_layer = None, [], None
    for tok in ids:
        out = model(torch.tensor([[tok]], device="cuda"), past_key_values=past, use_cache=True)
        past = out.past_key_values
        rows.append(out.logits[0, -1])
        (layers,) = hooks.take()
        per_layer = [[h[0, -1]] for h in layers] if per_layer is None else [a + [h[0, -1]] for a, h in zip(per_layer, layers)]
    return [torch.stack(l) for l in per_layer], torch.stack(rows)


@torch.no_grad()
def greedy(model, hooks, ids, n, cache=True, topk=None):
    """n tokens, each the argmax of the last position's logits (first on ties, as torch.argmax);
    with topk, also each step's top-k ids and logits."""
    seq, past, out_tokens, tops = list(ids), None, [], []
    step = torch.tensor([seq], device="cuda")
    for _ in range(n):
        if cache:
            out = model(step, past_key_values=past, use_cache=True)
            past = out.past_key_values
        else:
            out = model(torch.tensor([seq], device="cuda"), use_cache=False)
        hooks.take()
        if topk:
            tops.append(out.logits[0, -1].float().topk(topk))
        nxt = int(out.logits[0, -1].argmax())
        out_tokens.append(nxt)
        seq.append(nxt)
        step = torch.tensor([[nxt]], device="cuda")
    if topk:
        ids_ = torch.stack([t.indices for t in tops]).to(torch.int32).cpu()
        logits_ = torch.stack([t.values for t in tops]).to(torch.bfloat16).cpu()
        return out_tokens, ids_, logits_
    return out_tokens


def record(tensors, i, ids, layers, logits, topk_ids):
    for l, h in enumerate(layers):
        tensors[f"p{i}.layer{l}"] = h.to(torch.bfloat16).contiguous().cpu()
    tensors[f"p{i}.topk_ids"] = topk_ids.to(torch.int32).cpu()
    tensors[f"p{i}.topk_logits"] = logits.gather(1, topk_ids).contiguous().cpu()
    tensors[f"p{i}.lse"] = torch.logsumexp(logits.float(), dim=-1).cpu()
    nxt = torch.tensor(ids[1:], device=logits.device)
    tensors[f"p{i}.next_logit"] = logits[torch.arange(len(ids) - 1, device=logits.device), nxt].contiguous().cpu()
    tensors[f"p{i}.argmax"] = logits.argmax(dim=-1).to(torch.int32).cpu()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--synth", help="STYLE,LAYERS,SEED of a `fusegate synth-model` checkpoint")
    ap.add_argument("--greedy", type=int, default=32)
    ap.add_argument("--topk", type=int, default=64)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("capture_model.py: no CUDA device (goldens are captured on a GPU)")
    texts = json.load(open(a.prompts))["prompts"]
    tok = Tokenizer.from_file(os.path.join(a.checkpoint, "tokenizer.json"))
    prompts = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    os.makedirs(a.out, exist_ok=True)
    eager, sdpa = load_model(a.checkpoint, "eager"), load_model(a.checkpoint, "sdpa")
    he, hs = Hooks(eager), Hooks(sdpa)
    runs = {r: {} for r in RUNS}
    topks = []
    for i, ids in enumerate(prompts):
        layers, logits = prefill(eager, he, ids)
        topks.append(logits.float().topk(a.topk, dim=-1).indices)
        record(runs["reference"], i, ids, layers, logits, topks[i])
        tokens, top_ids, top_logits = greedy(eager, he, ids, a.greedy, topk=GREEDY_TOPK)
        runs["reference"][f"p{i}.greedy"] = torch.tensor(tokens, dtype=torch.int32)
        runs["reference"][f"p{i}.greedy_topk_ids"] = top_ids
        runs["reference"][f"p{i}.greedy_topk_logits"] = top_logits
        record(runs["floor-sdpa"], i, ids, *prefill(sdpa, hs, ids), topks[i])
        runs["floor-sdpa"][f"p{i}.greedy"] = torch.tensor(greedy(sdpa, hs, ids, a.greedy), dtype=torch.int32)
        record(runs["floor-decode"], i, ids, *one_by_one(eager, he, ids), topks[i])
        runs["floor-decode"][f"p{i}.greedy"] = torch.tensor(greedy(eager, he, ids, a.greedy, cache=False), dtype=torch.int32)
    for i, (layers, logits) in enumerate(batched(eager, he, prompts)):
        record(runs["floor-batch"], i, prompts[i], layers, logits, topks[i])
    files = []
    for run, tensors in runs.items():
        path = os.path.join(a.out, f"{run}.safetensors")
        save_file(tensors, path, metadata={"format": FORMAT, "run": run})
        files.append({"run": run, "file": f"{run}.safetensors", "sha256": sha256(path), "description": RUNS[run]})
    ckpt_files = [
        {"file": f, "sha256": sha256(os.path.join(a.checkpoint, f))}
        for f in sorted(os.listdir(a.checkpoint))
        if f.endswith((".safetensors", ".json"))
    ]
    synth = None
    if a.synth:
        style, layers, seed = a.synth.split(",")
        synth = {"style": style, "layers": int(layers), "seed": int(seed)}
    manifest = {
        "format": FORMAT,
        "config": json.load(open(os.path.join(a.checkpoint, "config.json"))),
        "checkpoint": {"synth": synth, "files": ckpt_files},
        "prompts": [{"text": t, "ids": p} for t, p in zip(texts, prompts)],
        "topk": a.topk,
        "greedy": a.greedy,
        "runs": files,
        "provenance": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0),
            "python": platform.python_version(),
            "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"capture_model.py: {len(prompts)} prompts, {len(runs)} runs -> {a.out}")


if __name__ == "__main__":
    main()
