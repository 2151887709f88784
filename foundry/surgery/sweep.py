"""The sweep's `--heal` mode: rank surgeries of a pretrained model after equal healing budgets.

    python -m foundry.cli.sweep attention gqa_1kv mla_128 --base experiments/heal_smollm2.yaml --heal tokens=4096

The base experiment names the pretrained parent (`init_from`: a zoo name or a run directory) and a data set
prepared with its tokenizer (`data.path`). Every candidate is a surgery of the parent (foundry.surgery),
measured before healing (out/surgery/<label>/surgery.json: KL, perplexity, parameters, KV cache, decode
speed) and trained as a healing experiment that starts from the transferred weights; the baseline is the
parent itself healed on the same tokens, so the comparison isolates the surgery. The sweep then trains,
evaluates and decides exactly as for any mutation (paired seeds: the same healing data order per index).
"""
from __future__ import annotations

from pathlib import Path

from foundry.config import ExperimentConfig, load_experiment, write_text_atomic


def healing_candidates(base: ExperimentConfig, base_path: str, opts, variants: list[str] | None = None) -> list:
    """The sweep's candidates for --heal: the parent healed (baseline) and one healed surgery per variant; a
    surgery that is refused is kept with its reason, as the sweep keeps refused mutations."""
    from foundry.mutate import MutationError, get_type
    from foundry.sweep.plan import Candidate, SweepError
    from foundry.surgery.heal import HealBudget, healing_experiment
    from foundry.surgery.run import load_parent, operate_and_measure, save_run
    from foundry.surgery.transforms import SurgeryError

    budget = HealBudget.parse(opts.heal)
    if not base.init_from:
        raise SweepError(f"--heal ranks surgeries of a pretrained model: the base {base_path} sets no init_from "
                         f"(a zoo name or a trained run directory)")
    if not base.data.path:
        raise SweepError(f"--heal: the base {base_path} sets no data.path; prepare the healing text with the "
                         f"parent's tokenizer (python -m foundry.data prepare --tokenizer ...) and name it there")
    get_type(opts.type)
    root = Path(opts.out) / "surgery"
    parent = load_parent(base.init_from)
    data = Path(base.data.path)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))

    def healed(cfg: ExperimentConfig, child_dir: Path) -> ExperimentConfig:
        h = healing_experiment(cfg, child_dir, data, budget, teacher=parent.name, out_dir=root / "unused")
        # where and how it runs stays the base experiment's (the sweep sets seeds, iterations and out_dir)
        t = base.training
        return h.replace({"training.device": t.device, "training.dtype": t.dtype, "training.num_threads": t.num_threads,
                          "training.compile": t.compile})

    def child(label: str, make) -> tuple[ExperimentConfig, Path]:
        """(child experiment, child run directory), made once: a resumed sweep reuses it."""
        d = root / label
        if (d / "experiment.yaml").is_file() and (d / "child" / "ckpt_best").is_dir():
            return load_experiment(d / "experiment.yaml"), d / "child"
        cfg = make(d)
        write_text_atomic(d / "experiment.yaml", cfg.to_yaml())
        return cfg, d / "child"

    cfg, d = child("baseline", lambda d: save_run(parent.model, parent.config, parent.tokenizer_path, d / "child",
                                                  train_block=budget.block))
    cands = [Candidate("baseline", healed(cfg, d), None)]
    for v in opts.variants if variants is None else variants:
        mutation = f"{opts.type} {v}"
        label = get_type(opts.type).file_stem(v)
        try:
            cfg, d = child(label, lambda d: operate_and_measure(parent, opts.type, v, data, d,
                                                                train_block=budget.block, say=say)["config"])
        except (SurgeryError, MutationError) as e:
            cands.append(Candidate(label, None, mutation, str(e), "refused"))
            continue
        cands.append(Candidate(label, healed(cfg, d), mutation))
    return cands


def report_lines(out: Path, results: dict) -> list[str]:
    """The report's surgery table: each candidate's cost before healing (out/surgery/<label>/surgery.json)
    beside its result after healing (the sweep's trials: validation bits per byte, task scores), with the
    KV-cache and parameter trade-off."""
    import json
    import statistics

    root = Path(out) / "surgery"
    if not root.is_dir():
        return []
    tasks = sorted({t for r in results.values() for t in r.get("tasks", {})})
    lines = ["## Surgery: cost before healing, result after", "",
             "Before: KL to the parent's next-token distribution and held-out perplexity of the transferred model, "
             "untrained. After: the sweep's trials (mean over seeds), every candidate healed on the same tokens; "
             "the baseline is the parent healed alike.", "",
             "| candidate | params | KV bytes/token | decode tok/s | KL before | ppl before | val bpb after |"
             + "".join(f" {t} after |" for t in tasks), "|" + "---|" * (7 + len(tasks))]
    for label, r in results.items():
        f = root / label / "surgery.json"
        rec = json.loads(f.read_text()) if f.is_file() else None
        b = rec["before"] if rec else None
        bpb = [v for v in r.get("val_bpb") or [] if v is not None]
        cells = [label,
                 f"{b['params_child'] / 1e6:.1f}M" if b else "(parent)",
                 f"{b['kv_bytes_child']:,} ({b['kv_bytes_child'] / b['kv_bytes_parent']:.2f}x)" if b else "-",
                 f"{b['decode_tps_child']:.1f} ({b['decode_tps_child'] / b['decode_tps_parent']:.2f}x)"
                 if b and "decode_tps_child" in b else "-",
                 f"{b['kl']:.3f}" if b else "0",
                 f"{b['ppl_child']:.1f} (parent {b['ppl_parent']:.1f})" if b else "-",
                 f"{statistics.mean(bpb):.4f}" if bpb else r.get("status", "-")]
        for t in tasks:
            sc = r.get("tasks", {}).get(t, {}).get("scores")
            cells.append(f"{statistics.mean(sc):.3f}" if sc else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
