"""Finetuning benchmarks and checks on a real checkpoint (default: SmolLM2-135M-Instruct, bench/make_smollm2.py).

    python bench/bench_finetune.py quality dpo --steps 40      # LoRA DPO on HH-RLHF: held-out preference accuracy
    python bench/bench_finetune.py quality sft --steps 40      # LoRA SFT on GSM8K: held-out SFT loss
    python bench/bench_finetune.py report OUT/quality_dpo.json  # the DPO report of a stored run, recomputed
    python bench/bench_finetune.py report A.json --against B.json  # run A's trained model vs run B's, pair by pair
    python bench/bench_finetune.py speed --rounds 3            # LoRA r=16 vs full finetuning: tokens/s, peak memory
    python bench/bench_finetune.py dpo-ref --rounds 3          # DPO reference: adapters disabled vs a frozen copy

`quality` scores the held-out items with the starting model and with the trained adapters (the same objective,
data and reference) and compares them item by item with the eval harness's paired tests
(foundry.eval.stats.compare_items: McNemar on the pairs, a paired bootstrap on the mean); for DPO three ways
(`preference_report`: the preference accuracy, the same length-normalised, the per-pair margin change), with
`--eval-at` steps scored on the way too. `speed` and `dpo-ref`
alternate fresh processes (A B A B ...), each building the run through the training core and timing
`train_step` after warm-up steps; peak memory is the process's maximum resident set (getrusage), so the
weights, the optimiser state and the activations all count.

Data: ../shared/data (hh-rlhf/harmless-base_test.jsonl.gz; gsm8k/train.jsonl, turned into prompt/response
records). HH-RLHF's first --reserved (500) records are left to the hh_rlhf eval, as data.reserved records.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FOUNDRY_SHARED_DATA", REPO.parent / "shared" / "data"))


def gsm8k_sft(n: int, out: Path) -> Path:
    """The first n GSM8K training problems as {"prompt", "response"} records."""
    rows = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:n]]
    out.write_text("".join(json.dumps({"prompt": r["question"], "response": r["answer"]}) + "\n" for r in rows))
    return out


def experiment(kind: str, base: str, steps: int, tmp: Path, **over):
    """The experiment as a raw mapping of the keys set here (init_from's checkpoint fills model_args)."""
    from foundry.config import from_dict

    common = {"init_from": base, "lora.rank": 16, "lora.alpha": 32, "training.max_iters": steps,
              "training.eval_interval": steps, "training.log_interval": max(1, steps // 4),
              "training.warmup_iters": max(1, steps // 10), "training.learning_rate": 2e-4, "training.min_lr": 2e-5,
              "training.weight_decay": 0.0, "training.sample_tokens": 0, "training.batch_size": 4,
              "model_args.block_size": 256, "out_dir": str(tmp / f"{kind}_run")}
    if kind == "dpo":
        common.update({"training.objective": "dpo", "training.dpo.beta": 0.1,
                       "data.path": str(DATA / "hh-rlhf" / "harmless-base_test.jsonl.gz"), "data.reserved": 500,
                       "data.val_examples": 200})
    else:
        common.update({"training.objective": "sft", "data.path": str(gsm8k_sft(1200, tmp / "gsm8k_sft.jsonl")),
                       "data.val_examples": 100})
    raw: dict = {}
    for key, value in {**common, **over}.items():
        *path, last = key.split(".")
        d = raw
        for part in path:
            d = d.setdefault(part, {})
        d[last] = value
    return from_dict(raw)


# --------------------------------------------------------------------------------------------------
# quality: before vs after, item by item
# --------------------------------------------------------------------------------------------------
def quality(args) -> dict:
    """The training core end to end (build_run, train_step, the objective's validation) on the real checkpoint:
    held-out items scored before training and after args.steps steps, compared item by item."""
    import torch

    from foundry.eval.stats import compare_items
    from foundry.lora import describe_trainable
    from foundry.optim import lr_at
    from foundry.train import autocast_ctx, pick_dtype
    from foundry.trainer.core import TrainState, build_run, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(args.out or tempfile.mkdtemp(prefix="bench_ft_"))
    tmp.mkdir(parents=True, exist_ok=True)
    over = {k: json.loads(v) if v.startswith("[") else v for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = experiment(args.kind, args.base, args.steps, tmp, **over)
    t0 = time.perf_counter()
    run = build_run(cfg, "cpu")
    TrainState.start(run)
    dev = torch.device("cpu")
    ctx = autocast_ctx(dev, pick_dtype(run.cfg.training.dtype, dev))
    print(f"{run.objective.describe(run.data)} | {describe_trainable(run.model)}", flush=True)
    before = run.objective.evaluate(run.model, run.data, dev, ctx, per_item=True)
    print("before:", {k: v for k, v in before.items() if k != "items"}, flush=True)
    loss_of, log = run.loss_of(ctx), []
    run.model.train()
    for it in range(args.steps):
        for g in run.optimizer.param_groups:
            g["lr"] = lr_at(it, run.cfg.training)
        step = train_step(run.model, run.optimizer, run.sampler.next_batch, loss_of, run.accum, 1.0)
        row = {"iter": it + 1, "loss": float(step.loss), **{k: float(v) for k, v in step.parts.items()}}
        log.append(row)
        print(json.dumps(row), flush=True)
        if it + 1 in args.eval_at and args.kind == "dpo":  # the trend on the way (the decisive figure is the end's)
            mid = run.objective.evaluate(run.model, run.data, dev, ctx, per_item=True)
            rep = {"step": it + 1, "after": {k: v for k, v in mid.items() if k != "items"},
                   "paired_after_vs_before": preference_report(before["items"], mid["items"],
                                                               run.cfg.training.dpo.beta)}
            (tmp / f"quality_{args.kind}_step{it + 1}.json").write_text(json.dumps(rep, indent=2, default=str))
            print(json.dumps(rep, default=str), flush=True)
            run.model.train()
    after = run.objective.evaluate(run.model, run.data, dev, ctx, per_item=True)
    print("after:", {k: v for k, v in after.items() if k != "items"}, flush=True)
    if args.kind == "dpo":
        cmp = preference_report(before["items"], after["items"], run.cfg.training.dpo.beta)
    else:
        cmp = compare_items(after["items"], before["items"], key="loss")
    res = {"kind": args.kind, "base": args.base, "steps": args.steps, "config": run.cfg.to_dict(),
           "train_examples_seen": args.steps * run.cfg.training.batch_size, "train_examples": len(run.data.train),
           "before": {k: v for k, v in before.items() if k != "items"},
           "after": {k: v for k, v in after.items() if k != "items"}, "paired_after_vs_before": cmp,
           "split": getattr(run.data, "split", None), "train_log": log, "wall_s": time.perf_counter() - t0,
           "items": {"before": before["items"], "after": after["items"]}}
    (tmp / f"quality_{args.kind}.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in ("split", "train_examples_seen", "before", "after", "paired_after_vs_before",
                                          "wall_s")}, indent=2, default=str))
    return res


def preference_report(before: list[dict], after: list[dict], beta: float) -> dict:
    """Held-out preference quality after vs before training, pair by pair (the same pairs, ids = record lines):
      preference_accuracy     log p(chosen) > log p(rejected) (sums over the answer's tokens; a tie counts 1/2):
                              the issue's "preference accuracy"; McNemar on the flips, paired bootstrap of the mean
      length_normalised       the same with per-token mean log-probs (HH answers differ in length, and a sum
                              favours the shorter answer whatever its content)
      margin_change           d = m_after - m_before per pair, m = log p(chosen) - log p(rejected): its mean with a
                              paired-bootstrap 95% CI (and Student's t), and the share of pairs with d > 0 (the
                              implicit-reward accuracy, the reference being the starting model) against 0.5
    The first asks whether the model now ranks more held-out pairs right; the last whether it moved towards
    the chosen answers at all, even where the ranking did not flip. `ranking` (ranking_diagnostics) says how far
    the first could move at all."""
    from scipy import stats

    from foundry.eval.stats import compare_items, paired_bootstrap, wilson_interval

    def scored(rows, norm):
        out = []
        for r in rows:
            c, j = r["logp_chosen"], r["logp_rejected"]
            if norm:
                c, j = c / r["tokens_chosen"], j / r["tokens_rejected"]
            out.append({"id": r["id"], "correct": 1.0 if c > j else 0.5 if c == j else 0.0, "m": c - j})
        return out

    res = {}
    for name, norm in (("preference_accuracy", False), ("length_normalised", True)):
        a, b = scored(after, norm), scored(before, norm)
        res[name] = compare_items(a, b, key="correct")
        if name == "preference_accuracy":
            by_b = {r["id"]: r["m"] for r in b}
            m_after, m_before = [r["m"] for r in a], [by_b[r["id"]] for r in a]
    d = [x - y for x, y in zip(m_after, m_before)]
    k, n = sum(x > 0 for x in d), len(d)
    t = stats.ttest_1samp(d, 0.0)
    res["margin_change"] = {"n": n, "bootstrap": paired_bootstrap(m_after, m_before),
                            "t_ci95": tuple(t.confidence_interval(0.95)), "t_p_value": t.pvalue,
                            "share_up": k / n, "share_up_wilson95": wilson_interval(k, n),
                            "share_up_binom_p": stats.binomtest(k, n, 0.5).pvalue}
    res["ranking"] = ranking_diagnostics(before, after, beta)
    return res


def ranking_diagnostics(before: list[dict], after: list[dict], beta: float) -> dict:
    """Why the preference accuracy (the ranking) can or cannot move:
      idealized_accuracy   the ranking accuracy of the DPO-optimal policy pi* = pi_ref exp(r / beta) / Z (Rafailov
                           et al. 2023, eq. 4) on these pairs, if every chosen answer were preferred with
                           probability p (Bradley-Terry: r_c - r_r = ln(p / (1 - p))): its margin is the starting
                           model's plus ln(p / (1 - p)) / beta nats, so it ranks a pair right only where that shift
                           outweighs the starting margin (the "idealized ranking accuracy" of Chen et al. 2024,
                           "Preference learning algorithms do not learn preference rankings", arXiv 2405.19534) -
                           what a perfectly fitted run would reach, not a short one
      shorter_agrees       the share of pairs whose ranking (sum of log-probs) picks the shorter answer, before
                           and after: how much of the ranking is answer length
      chosen_shorter       the share of pairs whose chosen answer is the shorter (by tokens)
      corr_margin_change_length   Pearson r between the margin change d and the length difference (tokens of
                           chosen - rejected): negative = training moved pairs towards the shorter answer
      by_length            the share of pairs with d > 0 among those whose chosen answer is longer, shorter, as
                           long: a training run that only learned "shorter is better" moves the first group
                           down and the second up
      beyond_length        d regressed on the length difference (least squares): the intercept, with its 95% CI,
                           is the margin change of a pair whose answers are equally long - what training moved
                           towards the chosen answers other than by their length"""
    import numpy as np
    from scipy import stats

    by_b = {r["id"]: r for r in before}
    rows = [(by_b[r["id"]], r) for r in after if r["id"] in by_b]
    m0 = np.array([b["logp_chosen"] - b["logp_rejected"] for b, _ in rows])
    m1 = np.array([a["logp_chosen"] - a["logp_rejected"] for _, a in rows])
    dlen = np.array([b["tokens_chosen"] - b["tokens_rejected"] for b, _ in rows], dtype=float)
    shorter = np.sign(-dlen)  # +1: the chosen answer is the shorter
    agree = lambda m: float(np.mean(np.sign(m)[dlen != 0] == shorter[dlen != 0]))  # noqa: E731
    ideal = {f"p={p}": float(np.mean(m0 + np.log(p / (1 - p)) / beta > 0)) for p in (0.6, 0.7, 0.9)}
    return {"beta": beta, "idealized_accuracy": ideal, "start_accuracy": float(np.mean(m0 > 0)),
            "median_abs_start_margin": float(np.median(np.abs(m0))),
            "median_abs_margin_change": float(np.median(np.abs(m1 - m0))),
            "shorter_agrees": {"before": agree(m0), "after": agree(m1)},
            "chosen_shorter": float(np.mean(dlen < 0)),
            "corr_margin_change_length": float(np.corrcoef(m1 - m0, dlen)[0, 1]),
            "by_length": {k: {"pairs": int(sel.sum()), "share_up": float(np.mean((m1 - m0)[sel] > 0)) if sel.any()
                              else None}
                          for k, sel in (("chosen_longer", dlen > 0), ("chosen_shorter", dlen < 0),
                                         ("same_length", dlen == 0))},
            "beyond_length": _intercept(dlen, m1 - m0, stats)}


def _intercept(x, y, stats) -> dict:
    """y = a + b x by least squares: a with its 95% t interval (n - 2 degrees of freedom), b, and r."""
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.intercept_stderr
    return {"intercept": float(fit.intercept), "intercept_ci95": (float(fit.intercept - half),
            float(fit.intercept + half)), "slope_per_token": float(fit.slope), "r": float(fit.rvalue)}


def report(args) -> None:
    """The DPO preference report of a stored `quality dpo` result (its per-pair items), recomputed."""
    res = json.loads(Path(args.path).read_text())
    beta = res["config"]["training"]["dpo"]["beta"]
    base = res["items"]["before"]
    if args.against:  # the other run's trained model in the place of the starting model
        other = json.loads(Path(args.against).read_text())
        if {r["id"] for r in other["items"]["after"]} != {r["id"] for r in base}:
            raise SystemExit(f"{args.against} was scored on other held-out pairs than {args.path}")
        base = other["items"]["after"]
    print(json.dumps(preference_report(base, res["items"]["after"], beta), indent=2, default=str))


# --------------------------------------------------------------------------------------------------
# speed / dpo-ref: one measurement per fresh process, alternated
# --------------------------------------------------------------------------------------------------
def measure(args) -> None:
    """One process: build the run, warm up, time args.steps train_steps; print one JSON line."""
    import torch

    from foundry.lora import trainable_share
    from foundry.train import autocast_ctx, pick_dtype
    from foundry.trainer.core import build_run, train_step

    torch.set_num_threads(args.threads or torch.get_num_threads())
    tmp = Path(tempfile.mkdtemp(prefix="bench_ft_m_"))
    over = json.loads(args.over)
    cfg = experiment(args.kind, args.base, 10, tmp, **over)
    run = build_run(cfg, "cpu")
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dev = torch.device("cpu")
    loss_of = run.loss_of(autocast_ctx(dev, pick_dtype(cfg.training.dtype, dev)))
    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        t, c = time.perf_counter(), time.process_time()
        train_step(run.model, run.optimizer, run.sampler.next_batch, loss_of, run.accum, 1.0)
        if i >= args.warmup:  # wall time, and CPU time (all threads): the steadier one on a shared machine
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    k, n = trainable_share(run.model)
    tokens = cfg.training.batch_size * run.objective.tokens_per_row()  # upper bound: rows x block (padded)
    print(json.dumps({"label": args.label, "s_per_step": statistics.median(times),
                      "cpu_s_per_step": statistics.median(cpu), "rows_tokens_per_step": tokens,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_build_mb": rss_built / 1024, "trainable": k, "total": n}))


def alternate(args, variants: list[tuple[str, str, dict]]) -> list[dict]:
    rows = []
    for r in range(args.rounds):
        for label, kind, over in variants:
            over = {**dict(kv.split("=", 1) for kv in args.set), **over}
            cmd = [sys.executable, __file__, "_measure", label, kind, json.dumps(over), "--base", args.base,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    by = {}
    for row in rows:
        by.setdefault(row["label"], []).append(row)
    print("\nlabel             wall s/step   CPU s/step   tokens/CPU-s   peak RSS MB   trainable share")
    med = {label: (statistics.median(r["s_per_step"] for r in rs), statistics.median(r["cpu_s_per_step"] for r in rs))
           for label, rs in by.items()}
    for label, rs in by.items():
        print(f"{label:<16} {med[label][0]:>11.2f}   {med[label][1]:>10.2f}   "
              f"{rs[0]['rows_tokens_per_step'] / med[label][1]:>12,.0f}   {max(r['peak_rss_mb'] for r in rs):>11.0f}   "
              f"{100 * rs[0]['trainable'] / rs[0]['total']:.2f}%")
    a, b = list(by)[:2]
    print(f"{b} / {a}: wall {med[b][0] / med[a][0]:.2f}x, CPU {med[b][1] / med[a][1]:.2f}x, peak RSS "
          f"{max(r['peak_rss_mb'] for r in by[b]) / max(r['peak_rss_mb'] for r in by[a]):.2f}x")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    rep = sub.add_parser("report", help="recompute the DPO preference report of a stored quality_dpo.json")
    rep.add_argument("path")
    rep.add_argument("--against", default=None, metavar="OTHER",
                     help="another run's quality_dpo.json on the same held-out pairs: compare this run's trained "
                          "model with that one's, pair by pair, instead of with the starting model")
    for name in ("quality", "speed", "dpo-ref", "_measure"):
        s = sub.add_parser(name)
        if name == "quality":
            s.add_argument("kind", choices=("dpo", "sft"))
            s.add_argument("--out", default=None, help="where the run and quality_<kind>.json go (default: a temp dir)")
            s.add_argument("--eval-at", type=lambda v: {int(x) for x in v.split(",")}, default=set(),
                           help="dpo: also score the held-out pairs after these steps, e.g. 100,200")
        if name != "_measure":
            s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="experiment override")
        if name == "_measure":
            s.add_argument("label")
            s.add_argument("kind")
            s.add_argument("over")
        s.add_argument("--base", default="smollm2-135m", help="zoo name or checkpoint directory (default smollm2-135m)")
        s.add_argument("--steps", type=int, default=40 if name == "quality" else 4)
        s.add_argument("--warmup", type=int, default=1)
        s.add_argument("--rounds", type=int, default=3)
        s.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.cmd == "report":
        report(args)
    elif args.cmd == "quality":
        quality(args)
    elif args.cmd == "_measure":
        measure(args)
    elif args.cmd == "speed":
        alternate(args, [("lora_r16", "sft", {}), ("full", "sft", {"lora.rank": 0, "training.learning_rate": 2e-5,
                                                                     "training.min_lr": 2e-6})])
    else:
        alternate(args, [("ref_adapters_off", "dpo", {"training.dpo.reference": "adapters_off"}),
                         ("ref_copy", "dpo", {"training.dpo.reference": "copy"})])
    return 0


if __name__ == "__main__":
    sys.exit(main())
