"""Surgery on a pretrained model: cost before healing, after a short healing run, against the controls.

    python bench/bench_surgery.py                                     # SmolLM2-135M, the Gutenberg novel
    python bench/bench_surgery.py --parent runs/x --text corpus.txt --surgery "attention mqa" --seeds 1

For each surgery and seed, three arms heal on the same tokens in the same order (paired):
    transferred   the surgery's weight transfer (foundry.surgery)
    random        the layers the surgery changed re-initialised (attention, MLP; for depth: random blocks dropped)
    scratch       the mutated config trained from a fresh initialisation (the from-scratch mutation)
Reported per surgery: parameters, KV-cache bytes per token, decode tokens/s (parent and child, alternating),
KL to the parent and held-out perplexity before and after healing, the share of the perplexity loss that
healing recovered, healing tokens. Writes OUT/results.json and prints the markdown table for BENCHMARKS.md.
Each arm's directory keeps only surgery.json, experiment.yaml and the healing run's metrics (config.yaml,
metrics.jsonl, summary.json): the child and healing checkpoints (about 3.6 GB per arm on SmolLM2) are deleted
once measured, unless --keep-runs. --before-only skips healing (the cost before healing, e.g. to compare
`--set model_args.mla.rope_select=high` with the default 2-norm selection).
Run it with OMP_NUM_THREADS=1 on a shared CPU (two spinning threads on two busy cores are far slower).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "gutenberg" / "pride_and_prejudice_pg1342.txt"
SURGERIES = ["attention mqa", "attention mla_128", "attention mla_64", "depth -4"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parent", default="smollm2-135m", help="zoo name or run directory (default smollm2-135m)")
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="healing / held-out text (default: the Gutenberg novel)")
    p.add_argument("--surgery", action="append", help=f"TYPE VARIANT (repeatable; default {SURGERIES})")
    p.add_argument("--heal", default="tokens=4096,batch=4,block=256,lr=2e-4,distill=0.5",
                   help="healing budget (foundry.surgery --heal syntax); the seed is set per arm")
    p.add_argument("--seeds", type=int, default=2, help="paired seeds per arm (default 2)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run: FIRST .. FIRST + SEEDS - 1 (default 0)")
    p.add_argument("--arms", default="transferred,random,scratch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="child config override for every surgery, e.g. model_args.mla.rope_head_dim=16")
    p.add_argument("--heldout-tokens", type=int, default=2048)
    p.add_argument("--calib-tokens", type=int, default=2048)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--out", default="runs/bench_surgery")
    p.add_argument("--keep-runs", action="store_true",
                   help="keep every arm's child and healing checkpoints (default: only surgery.json and metrics)")
    p.add_argument("--before-only", action="store_true", help="measure the cost before healing only; no healing")
    args = p.parse_args(argv)

    from foundry.config import parse_overrides
    from foundry.surgery.heal import HealBudget
    from foundry.surgery.run import Measure, heal_and_measure, load_parent, operate_and_measure, prepare_text

    out = Path(args.out)
    budget = HealBudget.parse(args.heal)
    overrides = dict(parse_overrides(args.set)) if args.set else None
    arms = args.arms.split(",")
    parent = load_parent(args.parent)
    data = prepare_text([args.text], parent.tokenizer_path, out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:  # seed-major: a cut-short run still has every surgery on seed 0
        for spec in args.surgery or SURGERIES:
            type_name, variant = spec.split()
            for arm in arms:
                key = f"{spec}|{arm}|{seed}"
                if key in results:  # resumable: a finished arm is not run again
                    continue
                d = out / f"{type_name}_{variant}".replace("-", "minus") / f"{arm}_s{seed}"
                decode = args.decode_tokens if (arm == "transferred" and seed == 0) else 0
                m = Measure(budget.block, args.calib_tokens, args.heldout_tokens, decode, 2)
                t0 = time.perf_counter()
                rec = operate_and_measure(parent, type_name, variant, data, d, measure=m, overrides=overrides,
                                          init=arm, seed=seed, train_block=budget.block)
                if not args.before_only:
                    rec = heal_and_measure(rec, parent, dataclasses.replace(budget, seed=1337 + seed), d, measure=m)
                results[key] = {k: rec.get(k) for k in ("before", "after", "recovered_share", "details", "method")}
                results[key]["heal_tokens"] = rec["heal"]["tokens"] if "heal" in rec else 0
                results[key]["seconds"] = time.perf_counter() - t0
                if not args.keep_runs:
                    prune_arm(d)
                (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
                print(f"== {key}: {results[key]['seconds']:.0f} s", flush=True)
    print(table(results, args.surgery or SURGERIES, arms, seeds))
    return 0


KEPT = {"surgery.json", "experiment.yaml", "heal/config.yaml", "heal/metrics.jsonl", "heal/summary.json"}


def prune_arm(d: Path) -> None:
    """Delete everything of one arm's directory but its record and metrics (KEPT): the checkpoints."""
    for f in sorted(d.rglob("*"), key=lambda f: len(f.parts), reverse=True):  # a folder after its files
        if f.is_dir() and not f.is_symlink():
            if not any(f.iterdir()):
                f.rmdir()
        elif f.relative_to(d).as_posix() not in KEPT:
            f.unlink()


def table(results: dict, surgeries: list[str], arms: list[str], seeds) -> str:
    from foundry.surgery.run import recovered_share

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else float("nan")

    lines = ["| surgery | params | KV bytes/token | decode tok/s (parent -> child) | KL before | ppl before | "
             "KL after | ppl after | recovered | ppl after: random init | ppl after: scratch | healing tokens |",
             "|" + "---|" * 12]
    for spec in surgeries:
        got = {arm: [results.get(f"{spec}|{arm}|{s}") for s in seeds] for arm in arms}
        tr = [r for r in got.get("transferred", []) if r]
        if not tr:
            continue
        b0 = tr[0]["before"]
        dec = (f"{b0['decode_tps_parent']:.1f} -> {b0['decode_tps_child']:.1f}" if "decode_tps_child" in b0 else "-")

        def ppl(arm):
            rs = [r for r in got.get(arm, []) if r and r["after"]]
            return f"{mean([r['after']['ppl_child'] for r in rs]):.1f}" if rs else "-"

        healed = [r for r in tr if r["after"]]
        kl_after = f"{mean([r['after']['kl'] for r in healed]):.3f}" if healed else "-"
        share = f"{mean([recovered_share(r['before'], r['after']) for r in healed]):.1%}" if healed else "-"

        lines.append(
            f"| {spec} | {b0['params_parent'] / 1e6:.1f}M -> {b0['params_child'] / 1e6:.1f}M | "
            f"{b0['kv_bytes_parent']:,} -> {b0['kv_bytes_child']:,} | {dec} | {mean([r['before']['kl'] for r in tr]):.3f} | "
            f"{b0['ppl_parent']:.1f} -> {mean([r['before']['ppl_child'] for r in tr]):.1f} | "
            f"{kl_after} | {ppl('transferred')} | {share} | {ppl('random')} | {ppl('scratch')} | "
            f"{tr[0]['heal_tokens']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
