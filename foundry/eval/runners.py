"""The runner of each task kind, registered by name; a task YAML's `kind` picks one.

A runner turns (TaskSpec, LM, EvalContext) into a summary dict and per-item rows:
    summary: metric, score, chance, n, plus kind-specific numbers (per-subject accuracy, pass@k, CI, ...)
    items:   one dict per item with a stable `id` and `correct` (bool or a fraction), for item-by-item comparison
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from foundry.registry import Registry

RUNNERS: Registry = Registry("eval task kind")


@dataclass
class EvalContext:
    limit: int | None = None
    num_fewshot: int | None = None
    data_dir: str | None = None
    allow_code_execution: bool = False
    batch_size: int = 16
    seed: int = 1234
    device: str = "cpu"
    options: dict = field(default_factory=dict)   # per-run overrides of a task's `options`
    model_cfg: object = None                      # the target's ModelConfig (probes train its architecture)
    log: Callable[[str], None] = lambda s: None


def fewshot_k(spec, ctx: EvalContext) -> int:
    from foundry.eval.spec import TaskError

    k = spec.num_fewshot if ctx.num_fewshot is None else ctx.num_fewshot
    if k < 0 or (spec.max_fewshot is not None and k > spec.max_fewshot):
        raise TaskError(f"task {spec.name}: --num-fewshot {k} is out of range [0, {spec.max_fewshot}] "
                        f"(the few-shot pool has {spec.max_fewshot} exemplars per prompt)")
    return k


def limited(records: list, ctx: EvalContext) -> list:
    return records if ctx.limit is None else records[: ctx.limit]


def accuracy_summary(spec, items: list[dict], **extra) -> dict:
    """Headline accuracy over every item (unencodable ones count as wrong) with a Wilson interval."""
    from foundry.eval.stats import wilson_interval

    n = len(items)
    k = sum(float(r["correct"]) for r in items)
    out = {"metric": spec.metric, "score": k / n if n else 0.0, "chance": spec.chance, "n": n,
           "ci95": wilson_interval(round(k), n), "n_unencodable": sum(1 for r in items if r.get("unencodable"))}
    out.update(extra)
    return out


def check_options(spec, runner, overrides: dict) -> None:
    """Unknown option keys (in the YAML or a --option override) fail with a suggestion, before any work."""
    from foundry.eval.spec import TaskError
    from foundry.registry import suggest

    allowed = runner.allowed_options({**spec.options, **overrides})
    for key in {**spec.options, **overrides}:
        if key not in allowed:
            raise TaskError(f"task {spec.name}: unknown option {key!r}{suggest(key, allowed)} "
                            f"(valid: {', '.join(sorted(allowed))}; from {spec.source} or --option)")


def import_builtin_runners() -> None:
    """Import the modules that register the built-in kinds (kept lazy so `--list` stays instant)."""
    from foundry.eval import constitution, gsm8k, humaneval, mmlu, probes  # noqa: F401
