"""Ranking, the promotion decision, and the sweep report (markdown + PNG plots). Torch-free.

Ranking: by capability (the mean score over the named eval tasks) with validation bits per byte breaking
ties; a task that cannot tell the candidates apart (every candidate at chance) is set aside, out loud, and
when no task is left bits per byte ranks alone. The decision: the top candidate replaces the baseline only if
a one-sided paired t-test across seeds says its win is beyond seed noise (p < alpha) and the mean gain exceeds
`min_effect`; the rule and its numbers are part of the decision text.
"""
from __future__ import annotations

import math
from pathlib import Path

from foundry.sweep.stats import paired_test


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _at_chance(scores: list[float], chance: float, n: int) -> bool:
    """A mean score indistinguishable from guessing: within two binomial standard errors of chance."""
    margin = 2 * math.sqrt(max(chance * (1 - chance), 0.0) / max(n, 1))
    return _mean(scores) <= chance + margin


def rank(results: dict[str, dict], tasks: list[str]) -> tuple[list[str], dict]:
    """Order the finished candidates best first. Returns (labels, how) where `how` says what ranked them:
    {"metric": "capability"|"val_bpb", "tasks": informative tasks, "notes": [sentences said out loud]}."""
    done = [k for k, r in results.items() if r["status"] == "done"]
    notes, informative = [], []
    for t in tasks:
        per = {k: results[k].get("tasks", {}).get(t) for k in done}
        if not done or any(p is None or p.get("error") for p in per.values()):
            errs = sorted({p.get("error", "no score") for p in per.values() if p is None or p.get("error")})
            notes.append(f"task {t!r} could not be scored ({'; '.join(errs)[:300]}), so it does not rank")
            continue
        chance = next(iter(per.values()))["chance"]
        n = next(iter(per.values()))["n"]
        scores = {k: p["scores"] for k, p in per.items()}
        if all(_at_chance(s, chance, n) for s in scores.values()) or len({round(_mean(s), 9) for s in
                                                                            scores.values()}) == 1:
            shown = ", ".join(f"{k} {_mean(s):.3f}" for k, s in scores.items())
            notes.append(f"task {t!r} cannot tell the candidates apart (all at chance {chance:.3f} on {n} items: "
                         f"{shown}), so it does not rank")
        else:
            informative.append(t)
    if tasks and not informative:
        notes.append("ranking by validation bits per byte instead, because no task separates the candidates")
    elif not tasks:
        notes.append("no eval task named: ranking by validation bits per byte")
    else:
        notes.append(f"ranking by capability (mean score on {', '.join(informative)}); validation bits per byte "
                     f"breaks ties")
    for k in done:
        bpb = results[k]["val_bpb"]
        results[k]["mean_bpb"] = _mean(bpb)
        results[k]["capability"] = _mean([_mean(results[k]["tasks"][t]["scores"]) for t in informative]) \
            if informative else None
        if informative:
            # per seed: the mean over informative tasks, for the paired test
            results[k]["capability_per_seed"] = [
                _mean([results[k]["tasks"][t]["scores"][i] for t in informative]) for i in range(len(bpb))]
    if informative:
        order = sorted(done, key=lambda k: (-round(results[k]["capability"], 9), results[k]["mean_bpb"]))
        metric = "capability"
    else:
        order = sorted(done, key=lambda k: results[k]["mean_bpb"])
        metric = "val_bpb"
    return order, {"metric": metric, "tasks": informative, "notes": notes}


def decide(results: dict[str, dict], order: list[str], how: dict, base: str = "baseline",
           alpha: float = 0.05, min_effect: float = 0.0) -> dict:
    """Whether the top candidate beats the baseline beyond seed noise. Returns the decision with its rule,
    statistics and a one-paragraph explanation."""
    metric = how["metric"]
    higher = metric == "capability"
    key = "capability_per_seed" if higher else "val_bpb"
    unit = "capability score" if higher else "validation bits per byte"
    rule = (f"promote the top-ranked mutant only if (1) its config differs from the baseline, (2) it was run "
            f"on >= 2 seeds paired with the baseline's, (3) a one-sided paired t-test of the per-seed gain in "
            f"{unit} gives p < {alpha:g}, and (4) the mean gain exceeds {min_effect:g}")
    out = {"rule": rule, "metric": metric, "alpha": alpha, "min_effect": min_effect, "promote": False,
           "winner": None, "test": None}
    if base not in results or results[base]["status"] != "done":
        out["text"] = "no promotion: the baseline did not finish, so nothing can be compared with it"
        return out
    mutants = [k for k in order if k != base]
    if not mutants:
        out["text"] = "no promotion: no mutant finished"
        return out
    if order[0] == base:
        best = mutants[0]
        out["winner"] = base
        t = paired_test(results[base][key], results[best][key], higher_is_better=higher, alpha=alpha)
        out["test"] = _plain_test(t, best)
        out["text"] = (f"no promotion: the baseline ranks first; the best mutant, {best}, "
                       f"{_describe(t, unit)}")
        return out
    win = order[0]
    out["winner"] = win
    t = paired_test(results[base][key], results[win][key], higher_is_better=higher, alpha=alpha)
    out["test"] = _plain_test(t, win)
    reasons = []
    if results[win].get("config_hash") == results[base].get("config_hash"):
        reasons.append("it is the same experiment as the baseline (a no-op)")
    if t["n"] < 2:
        reasons.append(f"it ran on {t['n']} seed; seed noise cannot be estimated from one (use --seeds 2 or more)")
    else:
        if not t["p"] < alpha:
            reasons.append(f"p = {t['p']:.3g} is not below {alpha:g} (a noise-level win)")
        if not t["mean"] > min_effect:
            reasons.append(f"the mean gain {t['mean']:.4g} does not exceed {min_effect:g}")
    desc = _describe(t, unit)
    if reasons:
        out["text"] = f"no promotion: {win} ranks first and {desc}; but " + "; ".join(reasons)
    else:
        out["promote"] = True
        out["text"] = f"PROMOTE {win}: {desc}, beyond seed noise"
    return out


def _plain_test(t: dict, label: str) -> dict:
    return {"candidate": label, **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in t.items()}}


def _describe(t: dict, unit: str) -> str:
    diffs = ", ".join(f"{d:+.4f}" for d in t["diffs"])
    if t["n"] < 2:
        return f"gains {t['mean']:+.4f} in {unit} on one seed ({diffs})"
    return (f"gains {t['mean']:+.4f} {unit} on average over {t['n']} paired seeds (per seed: {diffs}; "
            f"sd {t['sd']:.4f}, t = {t['t']:.2f} with {t['df']} df, one-sided p = {t['p']:.3g}; "
            f"t must exceed {t['t_crit']:.2f} for p < {t['alpha']:g})")


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
def write_report(out: Path, state: dict, results: dict, order: list[str], how: dict, decision: dict,
                 curves: dict, promoted_path: str | None) -> list[Path]:
    """report.md plus loss_curves.png and metrics.png (when matplotlib is installed). Returns the paths."""
    from foundry.config import write_text_atomic

    plots, plot_note = _plots(out, results, order, curves)
    lines = [f"# Sweep report: {state['identity']['type']} {' '.join(state['identity']['variants'])}", ""]
    ident = state["identity"]
    halving = f"eta {ident['eta']}, {ident['rungs']} rungs" if ident["halving"] else "off"
    lines += [f"- base: `{state['base_path']}` (config {state['base_hash']})",
              f"- seeds: {ident['seeds']} (paired: every candidate trains on the same seeds and data order)",
              f"- budget: {state['budget_text']}",
              f"- eval tasks: {', '.join(ident['tasks']) or 'none (validation bits per byte)'}",
              f"- successive halving: {halving}",
              f"- compute: {state.get('compute_text', '-')}", ""]
    lines += ["## Ranking", "", *[f"> {n}" for n in how["notes"]], ""]
    has_tasks = bool(how["tasks"])
    head = "| rank | candidate | mutation | status | val bpb (mean) | per seed |"
    head += " capability |" if has_tasks else ""
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for i, k in enumerate(order, 1):
        r = results[k]
        cap = f" {r['capability']:.4f} |" if has_tasks else ""
        lines.append(f"| {i} | {k} | {r.get('mutation') or '-'} | done | {r['mean_bpb']:.4f} | "
                     f"{', '.join(f'{b:.4f}' for b in r['val_bpb'])} |{cap}")
    for k, r in results.items():
        if k in order:
            continue
        why = (r.get("error") or "").splitlines()[0][:160] if r.get("error") else ""
        extra = " |" if has_tasks else ""
        lines.append(f"| - | {k} | {r.get('mutation') or '-'} | {r['status']} | - | {why} |{extra}")
    lines += ["", "## Decision", "", f"**{decision['text']}**", "", f"Rule: {decision['rule']}.", ""]
    if promoted_path:
        lines += [f"Promoted: the champion is now `{promoted_path}`; mutations start from it.", ""]
    if decision.get("test"):
        t = decision["test"]
        lines += ["| statistic | value |", "|---|---|"]
        for key in ("candidate", "n", "mean", "sd", "se", "t", "df", "t_crit", "p", "alpha"):
            v = t.get(key)
            lines.append(f"| {key} | {v:.4g} |" if isinstance(v, float) else f"| {key} | {v} |")
        lines.append(f"| per-seed gains | {', '.join(f'{d:+.4f}' for d in t['diffs'])} |")
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] or [plot_note]
    lines.append("")
    write_text_atomic(out / "report.md", "\n".join(lines))
    return [out / "report.md", *plots]


def _plots(out: Path, results: dict, order: list[str], curves: dict) -> tuple[list[Path], str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "(plots skipped: matplotlib is not installed; pip install 'foundry[plot]')"
    paths = []
    labels = list(order) + [k for k in results if k not in order and curves.get(k)]
    colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(labels)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k in labels:
        for j, c in enumerate(curves.get(k, [])):
            tr, ev = c["train"], c["val"]
            if tr:
                ax1.plot(*zip(*tr), color=colors[k], alpha=0.7, lw=1, label=k if j == 0 else None)
            if ev:
                ax2.plot(*zip(*ev), color=colors[k], alpha=0.8, lw=1, marker="o", ms=3, label=k if j == 0 else None)
    ax1.set(title="training loss (each line one seed)", xlabel="iteration", ylabel="loss (nats/token)")
    ax2.set(title="validation bits per byte", xlabel="iteration", ylabel="val bpb")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "loss_curves.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(order) + 2), 4))
    for i, k in enumerate(order):
        vals = results[k]["val_bpb"]
        ax.bar(i, _mean(vals), color=colors[k], alpha=0.5)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(order)), order, rotation=20, ha="right", fontsize=8)
    ax.set(title="final validation bits per byte (bar: mean; dots: seeds)", ylabel="val bpb")
    if order:
        lo = min(min(results[k]["val_bpb"]) for k in order)
        hi = max(max(results[k]["val_bpb"]) for k in order)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    fig.tight_layout()
    p = out / "metrics.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    return paths, ""
