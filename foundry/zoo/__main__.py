"""`python -m foundry.zoo list | info NAME_OR_PATH | export RUN DIR` (also `foundry zoo ...`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from foundry.zoo.architectures import ZooError
from foundry.zoo.catalog import NAMED, candidates, find, hub_cache, read_hf_config, zoo_root

EPILOG = """where a name is looked for (local files only, nothing is downloaded):
  1. a path given as such
  2. $FOUNDRY_ZOO_DIR (default ~/.cache/foundry/zoo): <root>/<name>, then <root>/<repository name>
  3. the Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)
a checkpoint directory holds config.json, *.safetensors and tokenizer.json.

examples:
  python -m foundry.zoo list
  python -m foundry.zoo info smollm2-135m
  python -m foundry.zoo export runs/baseline out/baseline-hf      # loads with transformers' from_pretrained
"""


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def cmd_list(args) -> int:
    from foundry.zoo.load import count_parameters

    print(f"zoo root: {zoo_root()}   hub cache: {hub_cache()}\n")
    print(f"{'name':<17} {'params':>7}  {'found at':<60} description")
    for name, n in NAMED.items():
        try:
            where = str(find(name))
        except ZooError:
            where = "not found (looked in " + ", ".join(str(c) for c in candidates(name)[:2]) + ", ...)"
        print(f"{name:<17} {_human(count_parameters(name)):>7}  {where:<60} {n.description}")
    print("\n`python -m foundry.zoo info NAME` lists every place a name is looked for.")
    return 0


def _describe(m) -> list[str]:
    win = {w for w in (m.sliding_window.layer_window(i) for i in range(m.n_layer))} \
        if m.attention == "sliding_window" else {None}
    return [f"layers {m.n_layer}, width {m.n_embd}, heads {m.n_head} (KV {m.kv_heads}), head size {m.head_dim}",
            f"mlp {m.mlp} hidden {m.mlp_hidden}; norm {m.norm} eps {m.norm_eps:g}; position {m.position}"
            + (f" theta {m.rope.theta:g}, scaling {m.rope.scaling.type}" if m.position == "rope" else ""),
            f"vocabulary {m.vocab_size}, context {m.block_size}, attention {m.attention}"
            + (f" windows {sorted(win, key=lambda w: (w is None, w))}" if m.attention == "sliding_window" else ""),
            f"biases: qkv {m.has_bias('qkv')}, output {m.has_bias('attn_proj')}, mlp {m.has_bias('mlp')}; "
            f"head {'tied to the embeddings' if m.tie_embeddings else 'untied'}"]


def cmd_info(args) -> int:
    from foundry.zoo.load import build_meta, chat_template, model_config, stop_ids, weight_files

    target = args.name
    try:
        d = find(target)
    except ZooError as e:
        if target not in NAMED:
            print(f"error: {e}", file=sys.stderr)
            return 2
        arch, m = model_config(NAMED[target].hf_config, target)
        print(f"{target}: {NAMED[target].description}\n  {arch.name}, {_human(count(build_meta(m)))} parameters "
              f"(published {NAMED[target].published_params})")
        for line in _describe(m):
            print("  " + line)
        print(f"\n{e}")
        return 1
    hf = read_hf_config(d)
    arch, m = model_config(hf, str(d / "config.json"))
    files = weight_files(d)
    size = sum(f.stat().st_size for f in files)
    print(f"{d}\n  {arch.name}, {_human(count(build_meta(m)))} parameters, {len(files)} safetensors file(s), "
          f"{size / 2**30:.2f} GiB, stored as {hf.get('torch_dtype') or hf.get('dtype') or '?'}")
    for line in _describe(m):
        print("  " + line)
    template = chat_template(d)
    print(f"  chat template: {'yes' if template else 'none'}; stop ids: {stop_ids(d, hf)}")
    return 0


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def cmd_export(args) -> int:
    from foundry.zoo.export import save_hf

    src = Path(args.run)
    shard = _parse_size(args.max_shard_size)
    if (src / "config.yaml").is_file() or (src / "ckpt_best").exists() or (src / "ckpt_last").exists():
        from foundry.checkpoint import load_run

        run = load_run(src)
        template, stops = None, None
        if run.config.init_from:  # a finetune of a zoo model keeps the base's chat template and stop ids
            try:
                from foundry.zoo.load import chat_template, stop_ids

                base = find(run.config.init_from)
                template, stops = chat_template(base), stop_ids(base, read_hf_config(base))
            except ZooError:
                pass
        model, tokenizer = run.model, None if args.no_tokenizer else run.tokenizer
        if args.dtype:
            import torch

            model = model.to(getattr(torch, args.dtype))
        out = save_hf(model, args.dir, tokenizer=tokenizer, chat_template=template, stop_ids=stops,
                      architecture=args.architecture, max_shard_bytes=shard, overwrite=args.overwrite)
    else:
        from foundry.zoo.load import load_pretrained

        p = load_pretrained(src if src.exists() else args.run, dtype=args.dtype)
        out = save_hf(p, args.dir, tokenizer=False if args.no_tokenizer else None,
                      architecture=args.architecture, max_shard_bytes=shard, overwrite=args.overwrite)
    hf = json.loads((out / "config.json").read_text())
    print(f"wrote {out} ({hf['architectures'][0]}, {hf['torch_dtype']}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _parse_size(s: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = s.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u) and t[: -len(u)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(u)]) * units[u])
    if t.isdigit():
        return int(t)
    raise ZooError(f"--max-shard-size {s!r}: write a size such as 5GB, 500MB or 2GiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundry.zoo", description="Pretrained Hugging Face checkpoints "
                                 "(Llama 3, Mistral, Qwen2, GPT-2, SmolLM2) in and out of foundry.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="named configs, parameter counts, where each is looked for and whether found")
    p = sub.add_parser("info", help="a checkpoint's architecture, size, dtype, template and stop ids")
    p.add_argument("name", metavar="NAME_OR_PATH", help="a zoo name, an org/name in the hub cache, or a directory")
    p = sub.add_parser("export", help="write a run (or a checkpoint) as a Hugging Face directory",
                       description="Write RUN (a foundry run directory, or a zoo name / checkpoint directory) as a "
                       "Hugging Face checkpoint in DIR: config.json, safetensors shards with an index, tokenizer, "
                       "generation config. A component transformers cannot represent is refused, naming it.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--architecture", choices=["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                              "GPT2LMHeadModel"], help="default: the one matching the model")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the model's own")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    p.add_argument("--no-tokenizer", action="store_true", help="weights and config only")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds files")
    args = ap.parse_args(argv)
    try:
        return {"list": cmd_list, "info": cmd_info, "export": cmd_export}[args.cmd](args)
    except (ZooError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
