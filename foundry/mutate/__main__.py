"""`python -m foundry.mutate TYPE VARIANT [--from FILE]`: write a mutated experiment from the baseline.

    python -m foundry.mutate attention mla          # -> experiments/attention_mla.yaml
    python -m foundry.mutate lr x0.5 --from experiments/attention_mla.yaml
    python -m foundry.mutate --list                 # every type with its variants
    python -m foundry.mutate new attention my_attn  # scaffold a new component variant

The last line printed is the written path, so scripts can chain: `foundry train $(foundry mutate ... | tail -1)`.
Exit status: 0 written, 1 no-op (nothing written), 2 refused or bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foundry.config import ConfigError, load_experiment


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m foundry.mutate",
        description="Write a mutated experiment derived from the baseline (the promoted champion "
                    "experiments/champion.yaml, else experiments/baseline.yaml), with its lineage.",
        epilog="`python -m foundry.mutate --list` shows every type; `python -m foundry.mutate new FAMILY NAME` "
               "scaffolds a new component variant.")
    p.add_argument("type", nargs="?", help="mutation type, e.g. attention, lr, depth (see --list)")
    p.add_argument("variant", nargs="?", help="the variant, e.g. mla, gqa_2kv, sliding_64, 3e-3, x0.5")
    p.add_argument("--from", dest="parent", metavar="FILE",
                   help="experiment to mutate (default: the champion, else experiments/baseline.yaml)")
    p.add_argument("--experiments", default="experiments", metavar="DIR",
                   help="where the baseline/champion live and the mutant is written (default: experiments)")
    p.add_argument("--out", metavar="FILE", help="write here instead of DIR/<type>_<variant>.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="extra config overrides applied to the parent before mutating (repeatable)")
    p.add_argument("--list", action="store_true", help="list every mutation type with its variants")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["new"]:
        return _scaffold(argv[1:])
    args = _parser().parse_args(argv)
    from foundry.mutate import (MutationError, NoOpMutation, apply_mutation, baseline_path, list_types,
                                mutant_path, write_experiment, write_mutant)
    if args.list:
        print(list_types())
        return 0
    if not args.type or args.variant is None:
        print("error: give a mutation TYPE and a VARIANT, e.g. `python -m foundry.mutate attention mla`, "
              "or --list to see them all", file=sys.stderr)
        return 2
    try:
        parent = Path(args.parent) if args.parent else baseline_path(args.experiments)
        cfg = load_experiment(parent, args.overrides)
        child = apply_mutation(cfg, args.type, args.variant, parent=str(parent))
        if args.out:
            path = write_experiment(child, args.out, f"# Written by `python -m foundry.mutate {args.type} "
                                                     f"{args.variant}` from {parent}.\n")
        else:
            path = write_mutant(child, args.experiments)
    except NoOpMutation as e:
        print(e, file=sys.stderr)
        return 1
    except (MutationError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lin = child.lineage
    changes = ", ".join(f"{k}={v}" for k, v in lin["changes"].items())
    print(f"{lin['mutation']} from {parent}: {changes} (config {lin['parent_hash']} -> {lin['hash']})")
    print(path if args.out else mutant_path(child, args.experiments))
    return 0


def _scaffold(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.mutate new",
                                description="Scaffold a new component variant (module, registration, test).")
    p.add_argument("family", help="component family, e.g. attention, position, norm, mlp, loss")
    p.add_argument("name", help="the new variant's name")
    args = p.parse_args(argv)
    try:
        from foundry.mutate.scaffold import scaffold
    except ImportError as e:
        print(f"error: scaffolding is not available in this checkout (foundry.mutate.scaffold: {e})",
              file=sys.stderr)
        return 2
    try:
        path = scaffold(args.family, args.name)
    except (ValueError, KeyError, FileExistsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
