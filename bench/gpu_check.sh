#!/usr/bin/env bash
# GPU throughput check for a machine with one CUDA GPU (under 5 minutes, no downloads):
# a GPT-2 124M-size model (12 layers, 12 heads, 768 wide, block 1024, vocab 50304) trained by foundry's own
# loop (python -m foundry.train) for 50 steps in bf16 autocast with torch.compile and fused AdamW, on synthetic
# tokens written to a temporary prepared data directory. Prints tokens/s and MFU against the card's dense bf16
# peak (H100/H200: 989 TFLOP/s; see PEAK_FLOPS in foundry/train.py; FOUNDRY_PEAK_FLOPS overrides).
#
# First, a decode check on CUDA: cached decoding of each attention variant against the full forward.
# After the GPT-2 run, two more throughput figures (each skipped with its variable set to 0):
#   LoRA finetuning of a Llama-3.2-1B-shaped model (16 x 2048, 32 heads / 8 KV heads, SwiGLU 8192, vocab
#   128,256, tied, random weights: no download), rank 16 on every projection, bf16 + compile: tokens/s.
#   Sweep throughput: JOBS small trials (6 x 384, block 256, batch 64, nanoGPT's Tiny Shakespeare model)
#   trained at once on the one GPU, as `--jobs` does, against one alone: summed tokens/s and the speed-up.
#
#   bash bench/gpu_check.sh                 # defaults: batch 16 x 1024 tokens, 50 steps
#   BATCH=32 STEPS=80 bash bench/gpu_check.sh
#   LORA_STEPS=0 JOBS=0 bash bench/gpu_check.sh      # the GPT-2 figure alone
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
BATCH="${BATCH:-16}"
STEPS="${STEPS:-50}"
LORA_STEPS="${LORA_STEPS:-30}"; LORA_BATCH="${LORA_BATCH:-8}"; LORA_BLOCK="${LORA_BLOCK:-1024}"
JOBS="${JOBS:-4}"; TRIAL_STEPS="${TRIAL_STEPS:-300}"
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

# ---- LoRA finetuning throughput: a Llama-3.2-1B-shaped model -------------------------------------------
if [ "$LORA_STEPS" -gt 0 ]; then
"$PY" - "$WORK/data_llama" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
from foundry.data.tokenize import CharTokenizer
out = Path(sys.argv[1]); out.mkdir(parents=True)
V = 128256                                  # Llama 3's vocabulary: more than uint16 holds
rng = np.random.default_rng(0)
for split, n in (("train", 5_000_000), ("val", 100_000)):
    rng.integers(0, V, n, dtype=np.uint32).tofile(out / f"{split}.bin")
CharTokenizer([chr(0x10000 + i) for i in range(V)]).save(out / "tokenizer.json")
(out / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "vocab_size": V, "dtype": "uint32",
                                           "fingerprint": "synthetic-uniform-llama"}))
PYEOF
cat > "$WORK/lora_llama1b.yaml" <<YAML
base_model: v2
model_args: {n_layer: 16, n_head: 32, n_kv_head: 8, n_embd: 2048, mlp: swiglu, mlp_hidden_size: 8192,
             block_size: $LORA_BLOCK, vocab_size: 128256, tie_embeddings: true, rope: {theta: 500000.0},
             bias: false, dropout: 0.0}
lora: {rank: 16, alpha: 32.0, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}
training:
  max_iters: $LORA_STEPS
  batch_size: $LORA_BATCH
  learning_rate: 2.0e-4
  warmup_iters: 5
  eval_interval: 100000
  eval_iters: 1
  log_interval: 5
  device: cuda
  dtype: bfloat16
  compile: true
  sample_tokens: 0
data: {path: $WORK/data_llama}
out_dir: $WORK/lora_run
YAML
# LoRA finetunes a base (init_from): a random-weight one in Hugging Face format, bf16 (throughput does not
# depend on the weights' values); the data takes the base's tokenizer.json, as finetuning data must.
"$PY" - "$WORK/lora_llama1b.yaml" "$WORK/base_llama1b" "$WORK/data_llama/tokenizer.json" <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
from foundry.config import load_experiment
from foundry.data.tokenize import load_tokenizer
from foundry.model import GPT
from foundry.zoo.export import save_hf
exp, out, tok = sys.argv[1:4]
cfg = load_experiment(exp, [])
torch.manual_seed(0)
with torch.device("cuda"):
    model = GPT(cfg.model_args).to(torch.bfloat16)
save_hf(model, out, tokenizer=load_tokenizer(tok))
shutil.copy(Path(out) / "tokenizer.json", tok)
print(f"gpu_check lora: random-weight base, {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters")
PYEOF
start=$(date +%s)
"$PY" -m foundry.train "$WORK/lora_llama1b.yaml" --no-store --set init_from="$WORK/base_llama1b"
"$PY" - "$WORK/lora_run/metrics.jsonl" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steady = rows[1:] or rows
print(f"gpu_check lora: Llama-3.2-1B shape, rank 16 on qkv/proj/fc/proj, bf16 + compile: "
      f"{statistics.median(r['tokens_per_sec'] for r in steady):,.0f} tokens/s (median of {len(steady)} windows "
      f"after the first), wall {sys.argv[2]} s including compilation")
PYEOF
fi

# ---- Sweep throughput: several small trials on the one GPU at once -----------------------------------
if [ "$JOBS" -gt 0 ]; then
trial() {  # trial NAME: nanoGPT's Tiny Shakespeare model on the embedded data (data.path null), fp32 -> bf16
  "$PY" -m foundry.train experiments/shakespeare_char_cpu.yaml --no-store --quiet \
    --set out_dir="$WORK/trial_$1" --set training.device=cuda --set training.dtype=bfloat16 \
    --set training.num_threads=1 --set training.max_iters="$TRIAL_STEPS" --set training.eval_interval=100000 \
    --set training.sample_tokens=0 --set training.eval_iters=1 --set model_args.n_layer=6 \
    --set model_args.n_head=6 --set model_args.n_embd=384 --set model_args.block_size=256 \
    --set training.batch_size=64
}
t0=$(date +%s.%N); trial alone; t1=$(date +%s.%N)
for j in $(seq 1 "$JOBS"); do trial "job$j" & done; wait
t2=$(date +%s.%N)
"$PY" - "$WORK" "$JOBS" "$t0" "$t1" "$t2" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
work, jobs, t0, t1, t2 = Path(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:])
def tps(name):
    rows = [json.loads(l) for l in open(work / f"trial_{name}" / "metrics.jsonl") if '"loss"' in l]
    return statistics.median(r["tokens_per_sec"] for r in (rows[1:] or rows))
alone, together = tps("alone"), [tps(f"job{j}") for j in range(1, jobs + 1)]
print(f"gpu_check sweep: one 6x384 trial alone {alone:,.0f} tokens/s, wall {t1 - t0:.1f} s; {jobs} at once "
      f"{sum(together):,.0f} tokens/s summed ({sum(together) / alone:.2f}x), wall {t2 - t1:.1f} s for {jobs} trials "
      f"({jobs * (t1 - t0) / (t2 - t1):.2f}x the trials per second of one after another)")
PYEOF
fi
