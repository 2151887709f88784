"""Mutate a trained model keeping its weights, measure the cost, optionally heal it.

    python -m foundry.surgery PARENT TYPE VARIANT --text FILE [--heal tokens=N[,lora=R][,distill=A]] [--out DIR]

PARENT is a foundry run directory or a zoo name / Hugging Face checkpoint directory (foundry.zoo).
TYPE VARIANT is a foundry.mutate mutation (`attention mqa`, `attention mla_64`, `depth -4`, `mlp_ratio x0.5`).
The text is prepared once with the parent's tokenizer (90% calibration and healing, 10% held out), unless
--data names a data set prepared with it already.

Written to --out (default runs/surgery/<mutation>):
    experiment.yaml   the child's experiment (lineage: parent, surgery, healing budget)
    child/            the transferred model as a run directory (load_run / init_from read it)
    surgery.json      what moved and how, the cost before healing, after healing, and the share recovered
    heal/             the healing run (foundry.train's run directory), with --heal
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from foundry.config import ConfigError, ExperimentConfig, from_dict, parse_overrides, write_text_atomic
from foundry.surgery.heal import HealBudget


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m foundry.surgery", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("parent", help="a foundry run directory, or a zoo name / Hugging Face checkpoint directory")
    p.add_argument("type", help="mutation type (python -m foundry.mutate --list): attention, depth, mlp_ratio, ...")
    p.add_argument("variant", help="its variant: mqa, gqa_1kv, mla, mla_<r>, -4, x0.5, ...")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", "--calib", dest="text", help="text file(s) for calibration, healing and held-out "
                     "measurement (prepared with the parent's tokenizer)", nargs="+")
    src.add_argument("--data", help="a data set already prepared with the parent's tokenizer "
                     "(python -m foundry.data prepare --tokenizer PARENT_DIR)")
    p.add_argument("--out", help="output directory (default runs/surgery/<type>_<variant>)")
    p.add_argument("--heal", help="heal after surgery: tokens=N[,lora=R][,lr=X][,batch=B][,block=T][,distill=A]"
                   "[,temperature=T][,seed=S] (lora 0 = full finetuning; distill = weight of the KL to the parent)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="child config override, e.g. --set model_args.mla.rope_head_dim=16 (repeatable)")
    p.add_argument("--config-only", action="store_true",
                   help="for a mutation with no weight transfer: the mutated config freshly initialised")
    p.add_argument("--init", choices=("transferred", "random"), default="transferred",
                   help="random: re-initialise the layers the surgery changed (attention, MLP; for depth, drop "
                        "random blocks) - the control that shows what the transfer is worth")
    p.add_argument("--depth-method", choices=("bi", "angular"), default="bi",
                   help="depth: rank single blocks by block influence (ShortGPT) or spans by angular distance "
                        "(Gromov et al.)")
    p.add_argument("--window", type=int, default=256, help="tokens per calibration / held-out window (256)")
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (4096)")
    p.add_argument("--heldout-tokens", type=int, default=8192, help="held-out tokens for KL and perplexity (8192)")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode-speed round, 0 = skip (32)")
    p.add_argument("--decode-rounds", type=int, default=3, help="alternating decode rounds per model (3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of --init random and of fresh initialisation")
    return p


# --------------------------------------------------------------------------------------------------
# Parent, data, windows
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Parent:
    model: object
    config: ExperimentConfig
    tokenizer_path: Path
    name: str


def load_parent(spec: str, device: str = "cpu") -> Parent:
    """A foundry run (or checkpoint) directory, else a zoo name / Hugging Face directory, in float32."""
    from foundry.checkpoint import find_checkpoint, load_run

    p = Path(spec)
    if p.is_dir() and any(find_checkpoint(c) for c in (p, p / "ckpt_best", p / "ckpt_last")):
        run = load_run(p, device)
        tok = next(t for t in (run.path / "tokenizer.json", run.path.parent / "tokenizer.json") if t.is_file())
        return Parent(run.model.float(), run.config, tok, str(p))
    from foundry.zoo import load_pretrained

    pre = load_pretrained(spec, device=device, dtype="float32", quiet=True)
    cfg = from_dict({"base_model": "v2", "model_args": dataclasses.asdict(pre.config),
                     "out_dir": f"runs/{Path(str(spec)).name}"})
    return Parent(pre.model, cfg, Path(pre.source) / "tokenizer.json", str(spec))


def prepare_text(files: list[str], tokenizer_path: Path, out: Path) -> Path:
    """The text prepared once with the parent's tokenizer under out/data (reused when already there)."""
    from foundry.data.prepare import prepare

    d = out / "data"
    if not (d / "meta.json").is_file():
        prepare(files, str(tokenizer_path), d, workers=1, log=lambda *a, **k: None)
    return d


def windows(tokens, n_tokens: int, width: int):
    """(N, width) int64 windows of consecutive tokens from the start of a token array."""
    import numpy as np
    import torch

    n = min(n_tokens, len(tokens)) // width
    if n == 0:
        raise ConfigError(f"{len(tokens)} tokens are fewer than one window of {width}; give more text or a "
                          f"smaller --window")
    return torch.from_numpy(np.asarray(tokens[: n * width], dtype=np.int64)).view(n, width)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def run_surgery(args) -> dict:
    import torch

    from foundry.checkpoint import save_checkpoint
    from foundry.data.dataset import load_data
    from foundry.surgery import cost as C
    from foundry.surgery.transforms import operate, reinit_changed

    budget = HealBudget.parse(args.heal) if args.heal else None   # a bad budget fails before any loading
    overrides = dict(parse_overrides(args.set)) if args.set else None
    for f in args.text or []:
        if not Path(f).is_file():
            raise ConfigError(f"--text {f}: no such file")
    out = Path(args.out or f"runs/surgery/{args.type}_{args.variant}".replace("-", "minus"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parent = load_parent(args.parent, args.device)
    data_dir = Path(args.data) if args.data else prepare_text(args.text, parent.tokenizer_path, out)
    data = load_data(data_dir)
    if data.vocab_size > parent.model.cfg.vocab_size:
        raise ConfigError(f"{data_dir}: its tokenizer has {data.vocab_size} tokens, more than the parent's "
                          f"vocabulary ({parent.model.cfg.vocab_size}); prepare it with the parent's tokenizer")
    calib = windows(data.train, args.calib_tokens, args.window)
    heldout = windows(data.val, args.heldout_tokens, args.window + 1)
    s = operate(parent.model, parent.config, args.type, args.variant, calib=calib, overrides=overrides,
                config_only=args.config_only, parent_name=parent.name, depth_method=args.depth_method)
    if args.init == "random":
        s = reinit_changed(s, parent.model, parent.config, calib, seed=args.seed)
    prompt = heldout[0, :32].tolist() if args.decode_tokens else None
    before = C.surgery_cost(parent.model, s.model, heldout, decode_prompt=prompt, decode_tokens=args.decode_tokens,
                            decode_rounds=args.decode_rounds)
    print(C.format_cost(before, f"{s.mutation} on {parent.name} ({s.method}; exact: {s.exact}), before healing:"))
    # the child as a run directory: what init_from and load_run read
    child_dir = out / "child"
    save_checkpoint(child_dir / "ckpt_best", s.model, {"iter": 0}, s.config.to_yaml())
    shutil.copyfile(parent.tokenizer_path, child_dir / "tokenizer.json")
    record = {"parent": parent.name, "mutation": s.mutation, "method": s.method, "exact": s.exact,
              "init": args.init, "details": s.details, "before": before, "data": str(data_dir),
              "calib_tokens": int(calib.numel()), "child": str(child_dir)}
    cfg = s.config
    if budget is not None:
        from foundry.checkpoint import load_run
        from foundry.surgery.heal import heal, healing_experiment

        cfg = healing_experiment(s.config, child_dir, data_dir, budget, teacher=parent.name,
                                 out_dir=out / "heal", parent=parent.name)
        del s
        summary = heal(cfg)
        healed = load_run(out / "heal", args.device, which="last").model.float()
        after = C.next_token_divergence(parent.model, healed, heldout)
        lost = before["ppl_child"] - before["ppl_parent"]
        record["after"] = after
        record["heal"] = {**cfg.lineage["heal"], "train_summary": {k: v for k, v in summary.items()
                                                                   if isinstance(v, (int, float, str))}}
        record["recovered_share"] = (before["ppl_child"] - after["ppl_child"]) / lost if lost > 0 else None
        print(f"after healing on {cfg.lineage['heal']['tokens']:,} tokens: KL {after['kl']:.4f}, perplexity "
              f"{after['ppl_child']:.3f} (parent {after['ppl_parent']:.3f})"
              + (f"; recovered {record['recovered_share']:.1%} of the perplexity lost"
                 if record["recovered_share"] is not None else ""))
    record["seconds"] = time.perf_counter() - t0
    write_text_atomic(out / "experiment.yaml", cfg.to_yaml())
    write_text_atomic(out / "surgery.json", json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out / 'surgery.json'}")
    return record


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from foundry.mutate import MutationError
    from foundry.surgery.transforms import SurgeryError

    try:
        run_surgery(args)
    except (ConfigError, MutationError, SurgeryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
