"""`python -m foundry.cli.sweep TYPE VARIANT... [options]`: the loop. Train the baseline and each mutant on the
same seeds and data order under one budget, evaluate, rank on the screening seeds, confirm the winner alone
against the baseline on fresh seeds, and (with --promote) replace the baseline only when that confirmation
shows a gain larger than the margin (default: the seed-to-seed SD a rerun shows).

    python -m foundry.cli.sweep attention mha gqa_2kv mqa --seeds 3 --jobs 2 --out runs/sweep_attn
    python -m foundry.cli.sweep lr x0.5 x2 --budget tokens=2e6 --eval-task mmlu --eval-limit 200 --promote
    python -m foundry.cli.sweep depth 2 6 8 --halving --eta 3      # prune hopeless mutants early
    python -m foundry.cli.sweep lr x0.5 x2 x4 --seeds 5 --adaptive  # add seeds only where undecided
    python -m foundry.cli.sweep lr x0.3 x30 --search tpe --trials 8 # Optuna TPE over the range LOW HIGH
    python -m foundry.cli.sweep lr x0.3 x30 --search tpe --trials 8 --halving --eta 4  # scored at budget/4

The promotion rule (printed and stored with every decision): the mutant with the largest mean paired gain on
the screening seeds is the only one tested; it and the baseline train on --confirm-seeds fresh seeds and a
one-sided paired t-test against the margin at --alpha decides. The family-wise false-promotion rate is <= alpha
for any number of mutants, with or without halving, because no selection ever sees the confirmation seeds.

Interrupted (Ctrl-C, SIGKILL) and run again with the same arguments, it resumes: finished trials are not
re-run. Every trial is recorded in the experiment store (python -m foundry.store list). The sweep folder
OUT (default runs/sweep_<type>_<variants>) gets report.md, loss_curves.png, metrics.png and results.json.
"""
from __future__ import annotations

import argparse
import sys

from foundry.config import ConfigError
from foundry.sweep.plan import SEARCHES  # torch-free: --help stays fast


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m foundry.cli.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("type", help="mutation type (python -m foundry.mutate --list)")
    p.add_argument("variants", nargs="+", metavar="VARIANT", help="one or more variants of that type")
    p.add_argument("--base", metavar="FILE", help="base experiment (default: experiments/champion.yaml if a "
                                                  "champion was promoted, else experiments/baseline.yaml)")
    p.add_argument("--experiments", default="experiments", metavar="DIR",
                   help="where the baseline and champion live; --promote writes DIR/champion.yaml")
    p.add_argument("--eval-task", dest="tasks", action="append", default=[], metavar="TASK",
                   help="capability task to rank by (repeatable); validation bits per byte is always measured")
    p.add_argument("--eval-limit", type=int, default=None, metavar="N", help="score only the first N items per task")
    p.add_argument("--eval-data", default=None, metavar="DIR",
                   help="eval data folder (default: $FOUNDRY_EVAL_DATA, else ../shared/data)")
    p.add_argument("--promote", action="store_true",
                   help="make the winner the champion if it beats the baseline beyond seed noise")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="trials run in parallel; CPU threads are split evenly among them (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="CPU threads per trial (default: cores // jobs)")
    p.add_argument("--seeds", type=int, default=3, metavar="K",
                   help="paired screening seeds per candidate (default 3; with --adaptive, the most)")
    p.add_argument("--confirm-seeds", type=int, default=None, metavar="C",
                   help="fresh seeds on which the screening winner and the baseline are retrained to confirm "
                        "(default: --seeds, at least 2)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive seeds: screening from 2 seeds, a mutant stops when clearly worse or clearly "
                        "best; confirmation looks at 3..C seeds with O'Brien-Fleming alpha spending")
    p.add_argument("--budget", metavar="KIND=N",
                   help="per-candidate budget: tokens=N, flops=N or seconds=N (default: the base config's "
                        "max_iters, as tokens, so mutants that change batch or context get as many tokens)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override the base config before mutating (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="sweep directory (default: runs/sweep_<type>_<variants>)")
    p.add_argument("--store", default=None, metavar="PATH",
                   help="experiment store (default: $FOUNDRY_STORE or runs/foundry.sqlite)")
    _decision_args(p)
    return p


def _decision_args(p: argparse.ArgumentParser) -> None:
    """Halving, the promotion rule, the search, where trials run."""
    p.add_argument("--halving", action="store_true",
                   help="successive halving: stop hopeless mutants early against the paired baseline curve")
    p.add_argument("--eta", type=int, default=3, help="halving: keep the best 1/eta at each rung (default 3)")
    p.add_argument("--rungs", type=int, default=2, help="halving: rungs, the first at budget/eta^(rungs-1) (default 2)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise false-promotion rate (level of the confirmation test; default 0.05)")
    p.add_argument("--min-effect", type=float, default=None, metavar="M",
                   help="the margin: smallest gain worth promoting, in the ranking metric's units (default: the "
                        "seed-to-seed SD on the screening seeds, pooled over the candidates)")
    p.add_argument("--search", default="grid", choices=SEARCHES,
                   help="grid: the variants as given (default); tpe: Optuna's TPE, gp: Gaussian-process "
                        "Bayesian optimisation (Optuna's GPSampler), over the numeric range given as two variants "
                        "LOW HIGH (lr, warmup, weight_decay, batch_size, ...)")
    p.add_argument("--trials", type=int, default=8, metavar="N",
                   help="--search tpe/gp: trials (default 8); the first third are an even cover of the range. With "
                        "--halving each trial is scored at the first rung and only the best 1/eta train to the "
                        "full budget (8 trials at --eta 4 cost 3.5 full trials)")
    p.add_argument("--executor", default="local", choices=("local", "ray", "submitit"),
                   help="where trials run: local process pool (default), Ray ($RAY_ADDRESS or a local "
                        "instance), or submitit (Slurm, or its local executor with --cluster local)")
    p.add_argument("--cluster", default=None, help="submitit cluster: slurm, local (default: auto-detect)")
    p.add_argument("--retry-failed", action="store_true", help="on resume, run failed trials again")
    p.add_argument("--progress", type=float, default=30.0, metavar="S",
                   help="seconds between progress tables when stdout is not a terminal (default 30)")
    p.add_argument("--heal", metavar="tokens=N[,...]",
                   help="rank surgeries of a pretrained model: every candidate is the base's init_from mutated with "
                        "its weights transferred (foundry.surgery), then healed on N tokens of data.path (lora=R, "
                        "distill=A, lr=X as in python -m foundry.surgery); the baseline is the parent healed alike")
    p.add_argument("--prune-checkpoints", action="store_true",
                   help="once the sweep has decided, delete the trial checkpoints of every candidate but the baseline "
                        "and the winner (metrics, configs and the report stay); on pretrained models a trial's "
                        "checkpoints take GBs")
    p.add_argument("--quiet", action="store_true", help="print only errors")


def default_out(type_name: str, variants: list[str]) -> str:
    """runs/sweep_<type>_<variants>: the same command resumes, another set of variants gets its own folder."""
    from foundry.mutate import safe_fragment
    return f"runs/sweep_{type_name}_{'_'.join(safe_fragment(v) for v in variants)}"[:120]


def _heal_budget(heal: str | None) -> str | None:
    """--heal's tokens as the sweep's budget, so every candidate heals on exactly as many tokens."""
    if not heal:
        return None
    from foundry.surgery.heal import HealBudget
    return f"tokens={HealBudget.parse(heal).tokens}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from foundry.mutate import MutationError
    from foundry.sweep.runner import SweepError, SweepOptions, run_sweep

    try:
        heal_budget = _heal_budget(args.heal)
    except ConfigError as e:  # a bad --heal fails before anything is planned
        print(f"error: {e}", file=sys.stderr)
        return 2
    opts = SweepOptions(type=args.type, variants=args.variants, base=args.base, experiments=args.experiments,
                        tasks=args.tasks, eval_limit=args.eval_limit, eval_data=args.eval_data,
                        promote=args.promote, jobs=args.jobs, seeds=args.seeds, confirm_seeds=args.confirm_seeds,
                        adaptive=args.adaptive, search=args.search, trials=args.trials,
                        budget=args.budget or heal_budget, overrides=args.overrides, heal=args.heal,
                        out=args.out or default_out(args.type, args.variants), store=args.store, halving=args.halving,
                        eta=args.eta, rungs=args.rungs, alpha=args.alpha, min_effect=args.min_effect,
                        executor=args.executor, cluster=args.cluster, threads=args.threads,
                        progress=args.progress, retry_failed=args.retry_failed, quiet=args.quiet,
                        prune_checkpoints=args.prune_checkpoints)
    from foundry.interrupt import EXIT_CODE, Interrupted, signals_interrupt
    from foundry.safeio import DamagedFileError, DiskFullError
    try:
        with signals_interrupt():  # SIGTERM (a scheduler's warning) stops the workers as Ctrl-C does
            run_sweep(opts)
    except (SweepError, MutationError, ConfigError, RuntimeError, DiskFullError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{' by SIGTERM' if isinstance(e, Interrupted) else ''}: finished trials are recorded; "
              f"run the same command again to resume ({opts.out})", file=sys.stderr)
        return EXIT_CODE if isinstance(e, Interrupted) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
