"""Evaluation harness: capability tasks (GSM8K, MMLU, HumanEval), harmlessness (Constitution) and synthetic
probes for small models. Tasks are YAML files in `foundry/eval/tasks/` (`python -m foundry.eval --list`).

Stable Python API (the sweep calls it; keep it backwards compatible):

    from foundry.eval import evaluate
    results = evaluate(target, ["mmlu", "probe_mqar"], limit=None, num_fewshot=None, out_dir=None,
                       device="cpu", data_dir=None, batch_size=16, allow_code_execution=False, seed=1234,
                       options=None, log=print)
    results["mmlu"] == {"task": "mmlu", "version": 1, "metric": "acc", "score": 0.31, "chance": 0.25, "n": 14042,
                        "items_path": ".../mmlu.jsonl", "seconds": 12.3, ...task-specific numbers}

target: a run directory, a checkpoint directory, a zoo model name (once the zoo exists), an object with
        `.model` and `.tokenizer` (what `foundry.checkpoint.load_run` returns), a `(model, tokenizer)` pair,
        or, for probe tasks only, a `ModelConfig` (probes train the architecture from scratch).
tasks:  task names (a str with commas is split). Unknown names fail with "did you mean", before any work.
out_dir: where `<task>.jsonl` (one line per item, with a stable `id`) and `results.json` go; default the
        run's `eval/` folder when target is a run or checkpoint directory, else a new temporary folder. Files are written atomically.
options: per-task option overrides, {task_name: {key: value}} (e.g. {"mmlu": {"score": "choice_text"}}).

Every summary holds `chance` beside `score`; two models' item files compare with
`foundry.eval.stats.compare_items` or `python -m foundry.eval compare A.jsonl B.jsonl`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from foundry.eval.spec import TaskError, TaskSpec, all_tasks, get_task, task_names
from foundry.safeio import write_text_atomic

__all__ = ["evaluate", "TaskError", "TaskSpec", "all_tasks", "get_task", "task_names", "format_summary"]


def _split(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    if not names:
        raise TaskError("no tasks given; `python -m foundry.eval --list` shows them")
    return names


def evaluate(target, tasks, *, limit: int | None = None, num_fewshot: int | None = None, out_dir=None,
             device: str = "cpu", data_dir=None, batch_size: int = 16, allow_code_execution: bool = False,
             seed: int = 1234, options: dict | None = None, log=None) -> dict[str, dict]:
    """Run `tasks` on `target`; return {task_name: summary} (see the module docstring)."""
    from foundry.eval.runners import RUNNERS, EvalContext, check_options, import_builtin_runners

    specs = [get_task(n) for n in _split(tasks)]              # unknown names fail here, before any loading
    if limit is not None and limit < 1:
        raise TaskError(f"limit must be >= 1, got {limit}")
    options = options or {}
    for name in options:
        get_task(name)
    import_builtin_runners()
    for s in specs:
        check_options(s, RUNNERS.get(s.kind), options.get(s.name, {}))
        if s.kind == "humaneval" and not allow_code_execution:
            from foundry.eval.humaneval import OPT_IN
            raise TaskError(OPT_IN)
    log = log or (lambda s: None)

    from foundry.config import ModelConfig
    if isinstance(target, ModelConfig):
        bad = [s.name for s in specs if s.kind != "probe"]
        if bad:
            raise TaskError(f"tasks {bad} need a trained model; a ModelConfig target runs probe tasks only")
        lm, model_cfg = None, target
    else:
        from foundry.eval.lm import LM, resolve_target
        model, tok, _ = resolve_target(target, device)
        lm = LM(model, tok, batch_size=batch_size)
        model_cfg = getattr(model, "cfg", None)

    if out_dir is None:
        is_path = isinstance(target, (str, os.PathLike)) and Path(target).is_dir()
        out_dir = Path(target) / "eval" if is_path else Path(tempfile.mkdtemp(prefix="foundry-eval-"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for spec in specs:
        ctx = EvalContext(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir,
                          allow_code_execution=allow_code_execution, batch_size=batch_size, seed=seed,
                          device=device, options=dict(options.get(spec.name, {})), model_cfg=model_cfg, log=log)
        if lm is not None:
            lm.n_truncated = 0
        t0 = time.perf_counter()
        summary, rows = RUNNERS.get(spec.kind)().run(spec, lm, ctx)
        items_path = out_dir / f"{spec.name}.jsonl"
        _write_jsonl(items_path, rows)
        summary = {"task": spec.name, "version": spec.version, **summary, "items_path": str(items_path),
                   "seconds": round(time.perf_counter() - t0, 3)}
        if lm is not None:
            summary["n_truncated"] = lm.n_truncated
        results[spec.name] = summary
        log(format_summary(summary))
        _write_json(out_dir / "results.json", {**_read_json(out_dir / "results.json"), **results})
    return results


def format_summary(s: dict) -> str:
    """One line per task: score beside chance, n, and the counts a reader must know about."""
    line = f"{s['task']} (v{s['version']}): {s['metric']} = {s['score']:.4f}  (chance {s['chance']:.4f}, n={s['n']}"
    if "ci95" in s:
        line += f", 95% CI [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
    if s.get("n_unencodable"):
        line += f", {s['n_unencodable']} unencodable scored wrong"
    if s.get("n_truncated"):
        line += f", {s['n_truncated']} truncated to the context"
    if s.get("sandbox_walls"):
        line += ", sandbox walls " + " ".join(f"{w}:{n}" for w, n in s["sandbox_walls"].items())
    return line + ")"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Atomically (safeio): on a full disk DiskFullError names the file and the previous one stays."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def _read_json(path: Path) -> dict:
    """The earlier results.json, which this evaluation adds to; a damaged one is kept aside, named."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        print(f"warning: {path} is damaged ({e}); kept as {aside.name}, a new one is written", file=sys.stderr)
        return {}
