#!/usr/bin/env bash
# The 28-layer model goldens (76 MB: too large to commit), regenerated on a GPU machine with
# python3, torch and transformers: each synthetic checkpoint from its seed, then HF's runs of it.
# Usage: golden/capture/model_l28.sh OUT [FUSEGATE_BINARY]   (writes OUT/stable-l28, OUT/stress-l28)
set -euo pipefail
out=${1:?usage: model_l28.sh OUT [FUSEGATE_BINARY]}
bin=${2:-cargo xtask}
here=$(cd "$(dirname "$0")" && pwd)
for spec in stable:1 stress:2; do
  style=${spec%:*}; seed=${spec#*:}
  ckpt=$(mktemp -d)
  $bin synth-model --layers 28 --seed "$seed" --style "$style" --out "$ckpt/ck"
  python3 "$here/capture_model.py" --checkpoint "$ckpt/ck" --prompts "$here/../model/prompts.json" \
    --out "$out/$style-l28" --synth "$style,28,$seed" --greedy 64
  rm -rf "$ckpt"
done
