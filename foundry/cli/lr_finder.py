"""`python -m foundry.cli.lr_finder EXPERIMENT`: a learning-rate range test (Smith 2017, "Cyclical Learning
Rates", section 3.3; popularised by fastai).

From a fresh model, train with a learning rate that grows exponentially from --min-lr to --max-lr, one batch
per step; smooth the loss with a bias-corrected exponential moving average; stop when the smoothed loss
exceeds --diverge times its best (or turns non-finite). The suggested learning rate is the one at the minimum
of the smoothed loss divided by 10 (a point still descending steeply, well short of divergence); the steepest
descent point is printed too. Writes OUT/lr_finder.json and OUT/lr_finder.png; --apply writes a new experiment
with the suggestion (the `lr` mutation, so min_lr keeps its ratio), whose path is the last line printed.

    python -m foundry.cli.lr_finder experiments/baseline.yaml
    python -m foundry.cli.lr_finder experiments/baseline.yaml --steps 200 --apply
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from foundry.config import ConfigError, load_experiment, write_text_atomic


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """Exponential ramp: min_lr * (max_lr / min_lr) ** (i / (steps - 1))."""
    return [min_lr * (max_lr / min_lr) ** (i / max(1, steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (Adam-style), so early values are not pulled to 0."""
    out, avg = [], 0.0
    for i, x in enumerate(losses):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """The minimum of the smoothed loss, a tenth of its learning rate (the suggestion), and the point of
    steepest descent in log(lr)."""
    i_min = min(range(len(smoothed)), key=lambda i: smoothed[i])
    steep = None
    if i_min >= 2:
        slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
                  for i in range(1, i_min)]
        steep = lrs[1 + min(range(len(slopes)), key=lambda j: slopes[j])]
    return {"min_loss_lr": lrs[i_min], "min_loss": smoothed[i_min], "suggested_lr": lrs[i_min] / 10,
            "steepest_lr": steep}


def range_test(cfg, min_lr: float, max_lr: float, steps: int, beta: float, diverge: float,
               threads: int = 0, say=print) -> dict:
    import torch

    from foundry.trainer.core import build_run, train_step

    tc = cfg.training
    if threads:
        torch.set_num_threads(threads)
    run = build_run(cfg, "cpu")  # the model, optimiser and batches (in the order training sees them) of a run
    run.model.train()
    loss_of = run.loss_of()
    clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    lrs_all = lr_schedule(min_lr, max_lr, steps)
    lrs, losses, smoothed, stop = [], [], [], "reached --max-lr"
    avg, best = 0.0, float("inf")
    for i, lr in enumerate(lrs_all):
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        step = train_step(run.model, run.optimizer, run.sampler.next_batch, loss_of, run.accum, clip)
        total = float(step.loss)
        if not math.isfinite(total):
            stop = f"loss became non-finite at lr {lr:.3g}"
            break
        avg = beta * avg + (1 - beta) * total
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr), losses.append(total), smoothed.append(s)
        best = min(best, s)
        if i >= 5 and s > diverge * best:
            stop = f"smoothed loss {s:.3f} exceeded {diverge:g} x its best {best:.3f} at lr {lr:.3g}"
            break
    if len(lrs) < 3:
        raise ValueError(f"the range test stopped after {len(lrs)} steps ({stop}); lower --min-lr")
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "stop": stop, "steps_run": len(lrs),
            **suggest(lrs, smoothed)}


def plot(res: dict, path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'foundry[plot]')"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(res["lrs"], res["losses"], lw=0.8, alpha=0.4, label="loss")
    ax.plot(res["lrs"], res["smoothed"], lw=1.5, label="smoothed")
    ax.axvline(res["suggested_lr"], color="green", ls="--", label=f"suggested {res['suggested_lr']:.2g}")
    ax.axvline(res["min_loss_lr"], color="grey", ls=":", label=f"minimum {res['min_loss_lr']:.2g}")
    ax.set_xscale("log")
    lo = min(res["smoothed"])
    ax.set_ylim(lo - 0.1 * abs(lo), max(res["smoothed"][0], lo) * 1.3)
    ax.set(title="learning-rate range test", xlabel="learning rate", ylabel="training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"plot: {path}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.cli.lr_finder", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("experiment", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="config override (repeatable)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--max-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100, help="steps of the ramp (default 100)")
    p.add_argument("--beta", type=float, default=0.9, help="smoothing of the loss EMA (default 0.9)")
    p.add_argument("--diverge", type=float, default=4.0, help="stop when the smoothed loss exceeds this x its best")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="output directory (default runs/lr_finder/<experiment name>)")
    p.add_argument("--apply", action="store_true", help="write a new experiment with the suggested learning rate")
    p.add_argument("--experiments", default="experiments", help="where --apply writes (default experiments)")
    args = p.parse_args(argv)
    if not (0 < args.min_lr < args.max_lr):
        print(f"error: need 0 < --min-lr < --max-lr, got {args.min_lr:g} and {args.max_lr:g}", file=sys.stderr)
        return 2
    if args.steps < 10 or not 0 <= args.beta < 1 or args.diverge <= 1:
        print("error: need --steps >= 10, 0 <= --beta < 1 and --diverge > 1", file=sys.stderr)
        return 2
    try:
        cfg = load_experiment(args.experiment, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/lr_finder/{Path(args.experiment).stem}")
    res = range_test(cfg, args.min_lr, args.max_lr, args.steps, args.beta, args.diverge, args.threads)
    res.update(experiment=args.experiment, config_hash=cfg.hash(), min_lr=args.min_lr, max_lr=args.max_lr,
               beta=args.beta, diverge=args.diverge)
    write_text_atomic(out / "lr_finder.json", json.dumps(res, indent=2))
    print(f"ran {res['steps_run']} of {args.steps} steps: {res['stop']}")
    print(f"smoothed loss is lowest ({res['min_loss']:.4f}) at lr {res['min_loss_lr']:.3g}; steepest descent at "
          f"{'-' if res['steepest_lr'] is None else format(res['steepest_lr'], '.3g')}")
    print(f"suggested learning rate: {res['suggested_lr']:.3g} (the minimum / 10); the experiment has "
          f"{cfg.training.learning_rate:g}")
    print(plot(res, out / "lr_finder.png"))
    print(f"results: {out / 'lr_finder.json'}")
    if args.apply:
        from foundry.mutate import MutationError, apply_mutation, write_mutant
        try:
            child = apply_mutation(cfg, "lr", f"{res['suggested_lr']:.3g}", parent=args.experiment)
        except MutationError as e:
            print(f"not applied: {e}", file=sys.stderr)
            return 1
        child = child.replace({"lineage": {**child.lineage, "lr_finder": {
            "suggested_lr": res["suggested_lr"], "min_loss_lr": res["min_loss_lr"], "steps_run": res["steps_run"],
            "results": str(out / "lr_finder.json")}}})
        print(write_mutant(child, args.experiments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
