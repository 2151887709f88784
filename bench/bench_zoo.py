"""Zoo benchmarks: loading a ~1B-parameter bf16 checkpoint (time, anonymous vs file-backed memory) and decoding
the real SmolLM2-135M-Instruct on CPU, each against transformers in the same run, alternating.

    python bench/bench_zoo.py load [--dir DIR] [--rounds 3]   # makes DIR (a Llama 3.2 1B-shaped checkpoint) if absent
    python bench/bench_zoo.py decode [--new 128] [--rounds 5] [--threads 2]

load: a random-weight checkpoint shaped as Llama 3.2 1B (config.json of the zoo's `llama3-1b`: 16 layers x 2048,
GQA 32/8, 8192 MLP, 128,256-token vocabulary, tied head; 1.24B parameters, 2.47 GB of bf16) is written in two
safetensors shards with model.safetensors.index.json (and a small tokenizer.json, which the zoo requires). Each
round starts one fresh process per loader, alternating which goes first:
    foundry       foundry.zoo.load_pretrained(DIR)                                  (keeps bf16)
    transformers  transformers.AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.bfloat16)
and times (a) the load call, (b) the load plus a first 16-token forward (which touches every weight: a lazily
memory-mapped tensor is read from disk only when first used, so (a) alone would flatter mmap). While the child
runs, the parent samples /proc/PID/status every 2 ms: RssAnon (anonymous memory: heap, copies; what the
checkpoint really costs beyond the page cache) and RssFile (pages mapped from files: the shards themselves, shared
with the page cache and reclaimable). Peaks are reported above the child's own baseline after its imports. The
shards are read once before the first round, so every process sees a warm page cache (the rounds compare loaders,
not disks). Target (issue 12): foundry's peak anonymous memory within 1.2x of the checkpoint's size; load time
no worse than transformers'.

decode: the SmolLM2 directory made by bench/make_smollm2.py (fp32), one process, both models loaded; per round,
alternating order, the same chat prompt, greedy, exactly --new tokens (stop ids disabled on both sides):
foundry GPT.generate (KV cache) vs transformers' generate (its default dynamic cache). Prints both token
sequences' agreement and tokens/s including the prefill.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADERS = ("foundry", "transformers")


def status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of a process, in bytes, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------------------------------
# The 1B checkpoint
# --------------------------------------------------------------------------------------------------
def make_checkpoint(d: Path, seed: int = 0) -> int:
    """Write a random bf16 Llama 3.2 1B-shaped checkpoint in two shards to `d`; returns its weight bytes."""
    import torch
    from safetensors.torch import save_file

    from foundry.data import embedded
    from foundry.data.tokenize import BPETokenizer
    from foundry.zoo import NAMED

    hf = dict(NAMED["llama3-1b"].hf_config, torch_dtype="bfloat16")
    H, I, L, V = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    shapes = {"model.embed_tokens.weight": (V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (kv, H),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, H),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I)})
    shapes["model.norm.weight"] = (H,)
    total = sum(2 * _numel(s) for s in shapes.values())
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map, done = {}, 0
    for n, shape in shapes.items():  # the first shard takes tensors until it holds half the bytes
        done += 2 * _numel(shape)
        weight_map[n] = files[0] if done <= total / 2 else files[1]
    for f in files:  # one shard in memory at a time (1.2 GB of bf16)
        shard = {}
        for n in (n for n in shapes if weight_map[n] == f):
            shape = shapes[n]
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
            shard[n] = t.to(torch.bfloat16)
        save_file(shard, str(d / f), metadata={"format": "pt"})
        del shard
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (d / "config.json").write_text(json.dumps({**hf, "architectures": ["LlamaForCausalLM"]}, indent=1))
    tok = BPETokenizer(vocab_size=512).fit(embedded.load_text()[:50_000])
    tok._tok.save(str(d / "tokenizer.json"))  # a plain Hugging Face tokenizer.json
    return total


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def checkpoint_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


# --------------------------------------------------------------------------------------------------
# One load, in its own process
# --------------------------------------------------------------------------------------------------
def child(loader: str, d: str) -> None:
    """Load `d` with `loader`, run a first forward, print one JSON line of timings and own memory readings."""
    t0 = time.perf_counter()
    import torch
    if loader == "foundry":
        from foundry.zoo import load_pretrained
    else:
        from transformers import AutoModelForCausalLM
    t_import = time.perf_counter() - t0
    base = status()
    t1 = time.perf_counter()
    if loader == "foundry":
        model = load_pretrained(d, quiet=True).model
        forward = lambda ids: model(ids)  # noqa: E731
    else:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
        forward = lambda ids: model(ids).logits  # noqa: E731
    t_load = time.perf_counter() - t1
    after_load = status()
    ids = torch.arange(16)[None] % 500
    with torch.no_grad():
        logits = forward(ids)
    t_first = time.perf_counter() - t1
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    print(json.dumps({"loader": loader, "import_s": t_import, "load_s": t_load, "load_forward_s": t_first,
                      "base": base, "after_load": after_load, "after_forward": status(), "dtypes": dtypes,
                      "logit0": float(logits[0, -1, :4].float().sum())}), flush=True)


def measure(loader: str, d: Path, threads: int) -> dict:
    """Run one child and sample its /proc status every 2 ms; returns the child's report with the peaks."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.Popen([sys.executable, __file__, "_child", loader, str(d)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while p.poll() is None:
        try:
            s = status(p.pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            break
        for k in peak:
            peak[k] = max(peak[k], s.get(k, 0))
        time.sleep(0.002)
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{loader} child failed ({p.returncode}):\n{err[-3000:]}")
    rep = json.loads(out.strip().splitlines()[-1])
    rep["peak"] = peak
    return rep


def bench_load(args) -> None:
    d = args.dir or Path(tempfile.gettempdir()) / "foundry-bench-zoo-1b"
    if not (d / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        n = make_checkpoint(d)
        print(f"wrote {d}: {n / 1e9:.2f} GB in two shards ({time.perf_counter() - t:.0f} s)", flush=True)
    size = checkpoint_bytes(d)
    for f in d.glob("*.safetensors"):  # warm the page cache once: every process then reads from memory
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    print(f"# checkpoint {d}: {size / 1e9:.3f} GB bf16 in {len(list(d.glob('*.safetensors')))} shards; "
          f"{args.rounds} rounds, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("| round | loader | load s | load + first forward s | peak RssAnon GB (x ckpt) | peak RssFile GB "
          "| import s | dtypes |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {k: [] for k in LOADERS}
    for r in range(args.rounds):
        order = LOADERS if r % 2 == 0 else LOADERS[::-1]
        for loader in order:
            rep = measure(loader, d, args.threads)
            anon = rep["peak"]["RssAnon"] - rep["base"]["RssAnon"]
            file_ = rep["peak"]["RssFile"] - rep["base"]["RssFile"]
            rows[loader].append((rep["load_s"], rep["load_forward_s"], anon, file_))
            print(f"| {r} | {loader} | {rep['load_s']:.2f} | {rep['load_forward_s']:.2f} | {anon / 1e9:.2f} "
                  f"({anon / size:.2f}x) | {file_ / 1e9:.2f} | {rep['import_s']:.1f} | {','.join(rep['dtypes'])} |",
                  flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in rows.items()}
    f, t = med["foundry"], med["transformers"]
    print(f"\nmedians: foundry load {f[0]:.2f} s, +forward {f[1]:.2f} s, anon {f[2] / 1e9:.2f} GB "
          f"({f[2] / size:.2f}x ckpt); transformers load {t[0]:.2f} s, +forward {t[1]:.2f} s, anon "
          f"{t[2] / 1e9:.2f} GB ({t[2] / size:.2f}x ckpt)")
    paired = sorted(b[1] / a[1] for a, b in zip(rows["foundry"], rows["transformers"]))
    print(f"load + first forward, transformers / foundry per round: median {statistics.median(paired):.2f}x "
          f"(range {paired[0]:.2f}-{paired[-1]:.2f}x)")
    print(f"ratios of medians, transformers / foundry: load {t[0] / f[0]:.2f}x, load + first forward {t[1] / f[1]:.2f}x; "
          f"anon target <= 1.2x ckpt: {'met' if f[2] <= 1.2 * size else 'MISSED'}; load no slower than "
          f"transformers: {'met' if f[1] <= t[1] else 'MISSED'} (load + forward)")


# --------------------------------------------------------------------------------------------------
# Decoding the real SmolLM2
# --------------------------------------------------------------------------------------------------
def bench_decode(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from foundry.zoo import find, load_pretrained

    torch.set_num_threads(args.threads)
    d = find(args.checkpoint)
    ours = load_pretrained(d).model
    theirs = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    msgs = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok.encode(ids, add_special_tokens=False)
    n = args.new

    def run_foundry():
        return ours.generate([ids], n, temperature=0)[0]

    theirs.generation_config.eos_token_id = None  # no stop (and no min_new_tokens, which would mask eos)

    def run_hf():
        with torch.no_grad():
            x = torch.tensor([ids])  # an explicit mask: pad id 2 is <|im_end|>, which the chat prompt holds
            out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                  pad_token_id=tok.eos_token_id)
        return out[0, len(ids):].tolist()

    runs = {"foundry": run_foundry, "transformers": run_hf}
    a, b = run_foundry(), run_hf()  # warm-up, and the greedy agreement
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"# {d} (fp32), prompt {len(ids)} tokens, {n} new tokens greedy, {args.threads} threads, "
          f"{args.rounds} rounds; greedy sequences agree for the first {same} of {n} tokens "
          f"({len(a)} / {len(b)} generated); {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("| round | foundry tokens/s | transformers tokens/s | ratio |")
    print("|---|---|---|---|")
    got = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for k in order:
            t = time.perf_counter()
            out = runs[k]()
            got[k].append(len(out) / (time.perf_counter() - t))
        print(f"| {r} | {got['foundry'][-1]:.1f} | {got['transformers'][-1]:.1f} | "
              f"{got['foundry'][-1] / got['transformers'][-1]:.2f}x |", flush=True)
    f, t = statistics.median(got["foundry"]), statistics.median(got["transformers"])
    ratios = sorted(a / b for a, b in zip(got["foundry"], got["transformers"]))
    print(f"\nmedian: foundry {f:.1f} tokens/s, transformers {t:.1f} tokens/s; foundry / transformers per round: "
          f"median {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("load", help="load time and memory of a 1B bf16 checkpoint vs transformers")
    lo.add_argument("--dir", type=Path, default=None, help="the checkpoint directory (made if absent; default: "
                                                           "$TMPDIR/foundry-bench-zoo-1b)")
    lo.add_argument("--rounds", type=int, default=3)
    lo.add_argument("--threads", type=int, default=2)
    de = sub.add_parser("decode", help="SmolLM2 decode tokens/s vs transformers' generate")
    de.add_argument("--checkpoint", default="smollm2-135m", help="zoo name or directory (bench/make_smollm2.py)")
    de.add_argument("--new", type=int, default=128, help="tokens generated per run")
    de.add_argument("--rounds", type=int, default=5)
    de.add_argument("--threads", type=int, default=2)
    ch = sub.add_parser("_child")
    ch.add_argument("loader", choices=LOADERS)
    ch.add_argument("dir")
    args = ap.parse_args(argv)
    if args.cmd == "_child":
        child(args.loader, args.dir)
    elif args.cmd == "load":
        bench_load(args)
    else:
        bench_decode(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
