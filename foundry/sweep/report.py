"""The sweep report: report.md (ranking with each mutant's gain and CI, the decision with its rule, correction
and numbers, noise floor and power, compute) plus PNG plots, and the lines printed at the end. Torch-free.
"""
from __future__ import annotations

import math
from pathlib import Path


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _f(x, spec=".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def announce(summary: dict, say, out: Path) -> None:
    """What the sweep prints when it ends: the notes, the ranking, the decision and its rule."""
    dec = summary["decision"]
    for n in dec["how"]["notes"]:
        say(n)
    for i, k in enumerate(summary["ranking"], 1):
        s = dec["screening"].get(k)
        say(f"  {i}. {k:<28} " + ("(the baseline)" if s is None else
                                  f"gain {s['mean']:+.4f} (95% CI {_f(s['ci'][0], '+.4f')} .. "
                                  f"{_f(s['ci'][1], '+.4f')}) over {s['n']} screening seed(s)"))
    nf = dec["noise"]
    say(f"noise floor: paired seed-to-seed SD {_f(nf['paired_sd'])}; margin {_f(dec['margin'])} "
        f"({dec['margin_source']}); detectable with {nf['confirm_seeds']} confirmation seeds: "
        f"{_f(nf['detectable_80'])} at 80% power, {_f(nf['detectable_90'])} at 90%")
    say(f"decision: {dec['text']}")
    say(f"rule: {dec['rule']}")
    say(f"correction: {dec['correction']}")
    say(f"compute: {dec['compute']['text']}")
    say(f"report: {out / 'report.md'}")


def write_report(out: Path, state: dict, summary: dict, curves: dict) -> list[Path]:
    """report.md plus loss_curves.png and metrics.png (when matplotlib is installed). Returns the paths."""
    from foundry.config import write_text_atomic

    results, dec = summary["results"], summary["decision"]
    order = [k for k in summary["ranking"] if results.get(k, {}).get("status") == "done"]
    plots, plot_note = _plots(out, results, order, curves)
    ident = state["identity"]
    halving = f"eta {ident['eta']}, {ident['rungs']} rungs" if ident["halving"] else "off"
    lines = [f"# Sweep report: {ident['type']} {' '.join(ident['variants'])}"
             + (f" (--search {ident['search']}, {ident['trials']} trials)" if ident.get("search", "grid") != "grid" else ""),
             "", f"- base: `{state['base_path']}` (config {state['base_hash']})",
             f"- seeds: {ident['seeds']} screening{' (adaptive, from 2)' if ident['adaptive'] else ''} + "
             f"{dec['noise']['confirm_seeds']} fresh confirmation seeds (paired: the same seeds and data order for "
             f"every candidate)", f"- budget: {state['budget_text']}",
             f"- eval tasks: {', '.join(ident['tasks']) or 'none (validation bits per byte)'}",
             f"- successive halving: {halving}", f"- compute: {dec['compute']['text']}", ""]
    lines += _ranking(results, order, dec)
    if ident.get("heal"):  # --heal: each candidate's surgery cost before healing beside its result after
        from foundry.surgery.sweep import report_lines
        lines += report_lines(out, results)
    lines += _decision(dec, summary.get("promoted"))
    lines += ["## Plots", "", *([f"![{p.stem}]({p.name})" for p in plots] or [plot_note]), ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return [out / "report.md", *plots]


def _ranking(results: dict, order: list[str], dec: dict) -> list[str]:
    lines = ["## Ranking (screening seeds)", "", *[f"> {n}" for n in dec["how"]["notes"]], "",
             f"Gain: the mean paired gain over the baseline in {dec['unit']} (positive is better), with its 95% CI "
             f"over the screening seeds (the winner's is selection-biased: the decision uses fresh seeds).", "",
             "| rank | candidate | mutation | status | seeds | val bpb (mean) | gain | 95% CI |", "|" + "---|" * 8]
    for i, k in enumerate(order, 1):
        r, s = results[k], dec["screening"].get(k)
        bpb = [b for b in r["val_bpb"] if b is not None]
        ci = f"{_f(s['ci'][0], '+.4f')} .. {_f(s['ci'][1], '+.4f')}" if s else "-"
        mean_bpb = f"{sum(bpb) / len(bpb):.4f}" if bpb else "-"  # "-": the objective has none (dpo)
        lines.append(f"| {i} | {k} | {r.get('mutation') or '-'} | done | {len(r['seed_index'])} | "
                     f"{mean_bpb} | {_f(s['mean'], '+.4f') if s else '(baseline)'} | {ci} |")
    for k, r in results.items():
        if k not in order:
            why = (r.get("error") or "").splitlines()[0][:160] if r.get("error") else ""
            lines.append(f"| - | {k} | {r.get('mutation') or '-'} | {r['status']} | - | - | - | {why} |")
    return lines + [""]


def _decision(dec: dict, promoted: str | None) -> list[str]:
    nf = dec["noise"]
    lines = ["## Decision", "", f"**{dec['text']}**", "", f"Rule: {dec['rule']}.", "",
             f"Correction for multiple mutants: {dec['correction']}.", "",
             f"Margin (the gain that matters): {_f(dec['margin'])} {dec['unit']}, {dec['margin_source']}.", ""]
    if promoted:
        lines += [f"Promoted: the champion is now `{promoted}`; mutations start from it.", ""]
    lines += ["### Noise floor and power", "", "| quantity | value |", "|---|---|",
              f"| paired seed-to-seed SD of the gain (pooled over the mutants' screening seeds) | "
              f"{_f(nf['paired_sd'])} ({nf['paired_sd_df']:.3g} effective df) |",
              f"| detectable gain at 80% power with {nf['confirm_seeds']} confirmation seeds | {_f(nf['detectable_80'])} |",
              f"| detectable gain at 90% power | {_f(nf['detectable_90'])} |", "",
              f"Detectable: the gain of one mutant among {nf.get('mutants', '?')} (the others no better than the "
              f"baseline) that the whole rule promotes with that probability - it must survive halving, win the "
              f"screening, pass the gate and the confirmation on fresh seeds - with the paired SD and the margin at "
              f"their {nf.get('upper_bound', 0.8):.0%} upper confidence bounds (foundry/sweep/power.py).", ""]
    t = dec.get("test")
    if t and t.get("n"):
        lines += [f"### Confirmation of {dec['winner']} on fresh seeds", "", "| statistic | value |", "|---|---|"]
        for key in ("n", "mean", "sd", "se", "margin", "t", "df", "t_crit", "p", "alpha"):
            v = t.get(key)
            lines.append(f"| {key} | {v:.4g} |" if isinstance(v, float) else f"| {key} | {v} |")
        lines += [f"| 95% CI of the gain | {_f(t['ci'][0], '+.4f')} .. {_f(t['ci'][1], '+.4f')} |",
                  f"| per-seed gains | {', '.join(f'{d:+.4f}' for d in t['diffs'])} |",
                  f"| looks (seeds) and boundaries | {', '.join(f'{n}: t > {b:.2f}' for n, b in zip(t['looks'], t['bounds']))} |",
                  f"| uncertainty from | {'seeds and items (crossed)' if t.get('per_item') else 'seeds'} |", ""]
    return lines


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
        if ax.get_legend_handles_labels()[0]:  # no curves (dpo trials log no val bpb): no legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "loss_curves.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(order) + 2), 4))
    for i, k in enumerate(order):
        vals = [b for b in results[k]["val_bpb"] if b is not None]
        if vals:
            ax.bar(i, _mean(vals), color=colors[k], alpha=0.5)
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(order)), order, rotation=20, ha="right", fontsize=8)
    ax.set(title="final validation bits per byte (bar: mean; dots: seeds)", ylabel="val bpb")
    if order and all(b is not None for k in order for b in results[k]["val_bpb"]):
        lo = min(min(b for b in results[k]["val_bpb"] if b is not None) for k in order)
        hi = max(max(b for b in results[k]["val_bpb"] if b is not None) for k in order)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    fig.tight_layout()
    p = out / "metrics.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    return paths, ""
