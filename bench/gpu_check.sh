#!/usr/bin/env bash
# GPU throughput check for a machine with one CUDA GPU (under 5 minutes, no downloads):
# a GPT-2 124M-size model (12 layers, 12 heads, 768 wide, block 1024, vocab 50304) trained by foundry's own
# loop (python -m foundry.train) for 50 steps in bf16 autocast with torch.compile and fused AdamW, on synthetic
# tokens written to a temporary prepared data directory. Prints tokens/s and MFU against the card's dense bf16
# peak (H100/H200: 989 TFLOP/s; see PEAK_FLOPS in foundry/train.py; FOUNDRY_PEAK_FLOPS overrides).
#
# First, a decode check on CUDA: cached decoding of each attention variant against the full forward.
#
#   bash bench/gpu_check.sh                 # defaults: batch 16 x 1024 tokens, 50 steps
#   BATCH=32 STEPS=80 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
BATCH="${BATCH:-16}"
STEPS="${STEPS:-50}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PY" - "$WORK/data" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
import torch
from foundry.data.tokenize import CharTokenizer
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (torch %s); this check needs a GPU" % torch.__version__)
out = Path(sys.argv[1]); out.mkdir(parents=True)
V = 50304                                   # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT
rng = np.random.default_rng(0)
for split, n in (("train", 20_000_000), ("val", 200_000)):
    rng.integers(0, V, n, dtype=np.uint16).tofile(out / f"{split}.bin")
CharTokenizer([chr(0x10000 + i) for i in range(V)]).save(out / "tokenizer.json")  # any V distinct symbols
(out / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "vocab_size": V, "dtype": "uint16",
                                           "fingerprint": "synthetic-uniform"}))
print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PYEOF

cat > "$WORK/gpt2_124m.yaml" <<YAML
base_model: v1
model_args: {n_layer: 12, n_head: 12, n_embd: 768, block_size: 1024, vocab_size: 50304, dropout: 0.0, bias: false}
training:
  max_iters: $STEPS
  batch_size: $BATCH
  learning_rate: 6.0e-4
  min_lr: 6.0e-5
  warmup_iters: 10
  beta2: 0.95
  eval_interval: 100000
  eval_iters: 1
  log_interval: 10
  device: cuda
  dtype: bfloat16
  compile: true
  sample_tokens: 0
data: {path: $WORK/data}
out_dir: $WORK/run
YAML

# Decoding on CUDA, fp32 (TF32 off), before the throughput run (~20 s): every cached path that CPU tests cover
# (GQA's folded query groups, MLA's latent-space decode, the rolling sliding-window buffer) must give the full
# forward's logits and the cache-free greedy generations on this card's SDPA kernels too.
"$PY" - <<'PYEOF'
import dataclasses, torch
from foundry.config import MLAConfig, ModelConfig, SlidingWindowConfig
from foundry.model import GPT
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
base = ModelConfig(n_layer=2, n_head=8, n_embd=256, block_size=96, vocab_size=128, position="rope")
cases = {"mha": {}, "gqa": {"n_kv_head": 2}, "mqa": {"n_kv_head": 1},
         "mla": {"mla": MLAConfig(kv_rank=32, rope_head_dim=8)},
         "sliding_window": {"sliding_window": SlidingWindowConfig(window=16, pattern="SL")}}
x = torch.randint(0, 128, (3, 96), generator=torch.Generator().manual_seed(0)).cuda()
bad = []
for name, opts in cases.items():
    torch.manual_seed(0)
    cfg = dataclasses.replace(base, attention="gqa" if name == "mqa" else name, **opts)
    cfg.check()
    model = GPT(cfg).cuda().eval()
    with torch.no_grad():
        full = model(x)
        caches = model.new_caches(3, 96)
        parts = [model(x[:, :40], caches=caches)] + [model(x[:, t:t + 1], caches=caches) for t in range(40, 96)]
    err = (torch.cat(parts, 1) - full).abs().max().item()
    prompts = [x[0, :5].tolist(), x[1, :30].tolist(), x[2, :17].tolist()]
    same = model.generate(prompts, 24, temperature=0) == model.generate(prompts, 24, temperature=0, use_cache=False)
    ok = err < 1e-4 and same
    bad += [] if ok else [name]
    print(f"gpu_check decode {name:15s} max |cached - full| {err:.2e}, greedy generations equal: {same}"
          f" -> {'ok' if ok else 'MISMATCH'}")
print("gpu_check decode:", "all cached paths agree" if not bad else f"MISMATCH in {bad}")
PYEOF

start=$(date +%s)
"$PY" -m foundry.train "$WORK/gpt2_124m.yaml"
"$PY" - "$WORK/run/metrics.jsonl" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steady = rows[1:] or rows          # the first window holds the compilation
tps = statistics.median(r["tokens_per_sec"] for r in steady)
mfu = [r["mfu"] for r in steady if "mfu" in r]
print(f"gpu_check: {tps:,.0f} tokens/s (median of {len(steady)} windows after the first), "
      + (f"MFU {100 * statistics.median(mfu):.1f}% of the dense bf16 peak" if mfu else "MFU unknown for this card "
         "(set FOUNDRY_PEAK_FLOPS)") + f", wall {sys.argv[2]} s including compilation")
PYEOF
