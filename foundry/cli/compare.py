"""`python -m foundry.cli.compare RUN...`: runs side by side. Config differences only, final metrics, paired
statistics, and a plot of the loss curves.

    python -m foundry.cli.compare runs/baseline runs/attention_mla
    python -m foundry.cli.compare runs/sweep_lr/trials/*/s* --plot compare.png

Paired statistics: runs of the same experiment under different seeds form a group; two groups that share
seeds are compared seed by seed (one-sided paired t-test, as the sweep does). Single runs are compared with
the first run at the evaluation points they share (the same iterations): wins, mean difference, and a t
statistic that is only descriptive, because points along one curve are not independent.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from foundry.config import ConfigError, from_dict
from foundry.sweep.runner import read_metrics
from foundry.sweep.stats import paired_test


class Run:
    def __init__(self, path: Path):
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            copy = next((c / "config.yaml" for c in (path / "ckpt_last", path / "ckpt_best")
                         if (c / "config.yaml").is_file()), None)
            if copy is not None:  # a run directory that lost its config.yaml: each checkpoint holds a copy
                raise FileNotFoundError(f"{cfg_path} is missing; its checkpoint holds a copy: `cp {copy} "
                                        f"{cfg_path}` (or re-run the training command, which writes it again)")
            raise FileNotFoundError(f"{path}: not a run directory (no config.yaml); give directories that "
                                    f"`python -m foundry.train` wrote")
        self.path = path
        self.raw = yaml.safe_load(cfg_path.read_text())
        self.cfg = from_dict(self.raw)
        self.rows = read_metrics(path / "metrics.jsonl")
        summary = path / "summary.json"
        try:
            self.summary = json.loads(summary.read_text()) if summary.is_file() else {}
        except ValueError as e:  # damaged: the final numbers come from metrics.jsonl instead
            print(f"warning: {summary} is damaged ({e}); using metrics.jsonl. Re-running the training command "
                  f"writes it again", file=sys.stderr)
            self.summary = {}
        self.train = sorted({r["iter"]: r["loss"] for r in self.rows if "loss" in r and "iter" in r}.items())
        self.val = sorted({r["iter"]: r["val_bpb"] for r in self.rows if "val_bpb" in r}.items())
        self.val_loss = sorted({r["iter"]: r["val_loss"] for r in self.rows if "val_loss" in r}.items())
        self.label = path.name

    @property
    def seedless_hash(self) -> str:
        return self.cfg.replace({"training.seed": 0}).hash()

    def final(self, key: str):
        if key in self.summary:
            return self.summary[key]
        series = {"val_bpb": self.val, "val_loss": self.val_loss}.get(key)
        return series[-1][1] if series else None


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(runs: list[Run]) -> dict[str, list]:
    """key -> value per run, for the keys whose values differ (out_dir and lineage left out)."""
    flats = [flatten({k: v for k, v in r.cfg.to_dict().items() if k not in ("out_dir", "lineage")}) for r in runs]
    keys = sorted(set().union(*flats))
    return {k: [f.get(k) for f in flats] for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1}


def paired_stats(runs: list[Run]) -> list[str]:
    lines = []
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.seedless_hash, []).append(r)
    glist = list(groups.values())
    ref = glist[0]
    if len(glist) >= 2 and all(len(g) >= 2 for g in glist):
        ref_by_seed = {r.cfg.training.seed: r for r in ref}
        for g in glist[1:]:
            seeds = [r.cfg.training.seed for r in g if r.cfg.training.seed in ref_by_seed]
            by_seed = {r.cfg.training.seed: r for r in g}
            a = [ref_by_seed[s].final("val_bpb") for s in seeds]
            b = [by_seed[s].final("val_bpb") for s in seeds]
            if len(seeds) < 2 or None in a + b:
                lines.append(f"{g[0].label} vs {ref[0].label}: fewer than 2 shared seeds with final metrics")
                continue
            t = paired_test(a, b, higher_is_better=False)
            lines.append(f"group of {g[0].label} vs group of {ref[0].label}, paired over seeds {seeds}: "
                         f"val bpb gain {t['mean']:+.4f} (per seed {', '.join(f'{d:+.4f}' for d in t['diffs'])}), "
                         f"t = {t['t']:.2f} with {t['df']} df, one-sided p = {t['p']:.3g}"
                         f" -> {'beyond' if t['p'] < 0.05 else 'within'} seed noise at 0.05")
        return lines
    first = runs[0]
    ref_val = dict(first.val)
    for r in runs[1:]:
        common = [it for it, _ in r.val if it in ref_val]
        if not common:
            lines.append(f"{r.label} vs {first.label}: no evaluation at a shared iteration")
            continue
        a = [ref_val[it] for it in common]
        b = [dict(r.val)[it] for it in common]
        t = paired_test(a, b, higher_is_better=False)
        wins = sum(d > 0 for d in t["diffs"])
        tail = (f", t = {t['t']:.2f} over the curve (descriptive: points of one run are not independent; "
                f"run several seeds for a real test)") if t["n"] >= 2 else ""
        lines.append(f"{r.label} vs {first.label}: lower val bpb at {wins} of {len(common)} shared evaluation "
                     f"points, mean gain {t['mean']:+.4f}{tail}")
    return lines


def plot(runs: list[Run], path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'foundry[plot]')"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        if r.train:
            ax1.plot(*zip(*r.train), lw=1, label=r.label)
        if r.val:
            ax2.plot(*zip(*r.val), lw=1, marker="o", ms=3, label=r.label)
    ax1.set(title="training loss", xlabel="iteration", ylabel="loss (nats/token)")
    ax2.set(title="validation bits per byte", xlabel="iteration", ylabel="val bpb")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"plot: {path}"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.cli.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with config.yaml, metrics.jsonl)")
    p.add_argument("--plot", default="compare.png", metavar="PNG", help="where to write the plot (default compare.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write a plot")
    args = p.parse_args(argv)
    try:
        runs = [Run(Path(r)) for r in args.runs]
    except (FileNotFoundError, ConfigError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # s1337 under several candidates: use parent/name
        for r in runs:
            r.label = f"{r.path.parent.name}/{r.path.name}"
    diff = config_diff(runs)
    print("== config (differences only) ==")
    if diff:
        print(_table(["key"] + [r.label for r in runs], [[k] + v for k, v in diff.items()]))
    else:
        print("(identical experiments)")
    print("\n== metrics ==")
    rows = []
    for r in runs:
        tps = [x["tokens_per_sec"] for x in r.rows if "tokens_per_sec" in x]
        rows.append([r.label, r.final("val_loss"), r.final("val_bpb"), r.summary.get("best_val_loss"),
                     r.val[-1][0] if r.val else None, r.summary.get("params"), r.summary.get("wall_seconds"),
                     sum(tps) / len(tps) if tps else None])
    print(_table(["run", "val_loss", "val_bpb", "best_val_loss", "iters", "params", "wall_s", "tok/s"], rows))
    if len(runs) > 1:
        print("\n== paired statistics ==")
        for line in paired_stats(runs):
            print(line)
    if not args.no_plot:
        print("\n" + plot(runs, Path(args.plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
