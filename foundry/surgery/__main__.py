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
import sys
from pathlib import Path

from foundry.config import ConfigError, parse_overrides
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
    p.add_argument("--init", choices=("transferred", "random", "scratch"), default="transferred",
                   help="random: re-initialise the layers the surgery changed (attention, MLP; for depth, drop "
                        "random blocks); scratch: every weight fresh - the controls that show what the transfer "
                        "is worth")
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


def run_surgery(args) -> dict:
    from foundry.surgery.run import Measure, heal_and_measure, load_parent, operate_and_measure, prepare_text

    budget = HealBudget.parse(args.heal) if args.heal else None   # a bad budget fails before any loading
    overrides = dict(parse_overrides(args.set)) if args.set else None
    out = Path(args.out or f"runs/surgery/{args.type}_{args.variant}".replace("-", "minus"))
    missing = [f for f in args.text or [] if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--text {missing[0]}: no such file")
    measure = Measure(args.window, args.calib_tokens, args.heldout_tokens, args.decode_tokens, args.decode_rounds)
    parent = load_parent(args.parent, args.device)
    data_dir = Path(args.data) if args.data else prepare_text(args.text, parent.tokenizer_path, out)
    record = operate_and_measure(parent, args.type, args.variant, data_dir, out, measure=measure,
                                 overrides=overrides, config_only=args.config_only, init=args.init, seed=args.seed,
                                 depth_method=args.depth_method, train_block=budget.block if budget else None)
    if budget is not None:
        record = heal_and_measure(record, parent, budget, out, measure=measure, device=args.device)
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
