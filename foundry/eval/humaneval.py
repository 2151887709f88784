"""HumanEval (Chen et al. 2021): 164 Python functions to complete, judged by running their unit tests.

Generation stops at the Codex paper's stop sequences ("\nclass", "\ndef", "\n#", "\nif", "\nprint"). Each
completion runs, with its problem's tests, in the sandbox (`foundry.eval.sandbox`: its own contained child
process), which needs an explicit opt-in (`allow_code_execution`, `--allow-code-execution`). pass@k is the
unbiased estimator of Chen et al. over n samples per problem.

`score_samples(path)` judges completions made elsewhere, in OpenAI human-eval's sample format (JSON lines with
`task_id` and `completion`), and writes per-sample results beside them (`<samples>_results.jsonl`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from foundry.eval.data import find_file, read_records, require_fields
from foundry.eval.runners import RUNNERS, EvalContext, limited
from foundry.eval.sandbox import Limits, run_programs
from foundry.eval.spec import TaskError
from foundry.eval.stats import pass_at_k

PROBLEM_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
OPT_IN = ("HumanEval runs model-written code. It runs in a contained child process (see foundry/eval/sandbox.py), "
          "but only when you opt in: pass --allow-code-execution (Python: allow_code_execution=True).")


def load_problems(spec, data_dir=None) -> dict[str, dict]:
    path = find_file(spec, spec.data, data_dir)
    records = read_records(path)
    require_fields(records, PROBLEM_FIELDS, path)
    return {r["task_id"]: r for r in records}


def program(problem: dict, completion: str) -> str:
    """The file that is run: prompt + completion, then the problem's tests and the call of its check()."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def check_completions(problems: dict[str, dict], samples: list[dict], limits: Limits = Limits(),
                      workers: int | None = None) -> list[dict]:
    """Run every sample ({task_id, completion}); return them with `passed` and `result` added."""
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise TaskError(f"samples name unknown task ids {unknown[:5]}; are they HumanEval samples?")
    outcomes = run_programs([program(problems[s["task_id"]], s["completion"]) for s in samples], limits, workers)
    return [{**s, "passed": o.passed, "result": o.status if o.passed or not o.detail else f"{o.status}: {o.detail}",
             "walls": list(o.walls)} for s, o in zip(samples, outcomes)]


def walls_summary(results: list[dict]) -> dict[str, int]:
    """How many programs ran behind each sandbox wall (netns, pidns, landlock-abiN, mountns, guard)."""
    counts: dict[str, int] = {}
    for r in results:
        for w in r.get("walls", ()):
            counts[w] = counts.get(w, 0) + 1
    return counts


def walls_warning(results: list[dict]) -> str | None:
    """One line when some program had no kernel filesystem wall (neither Landlock nor the mount view)."""
    bare = sum(1 for r in results if not any(w.startswith("landlock") or w == "mountns" for w in r.get("walls", ())))
    if not bare:
        return None
    return (f"warning: sandbox: {bare} of {len(results)} programs ran with only the Python guard around the "
            f"filesystem (no Landlock, no mount namespace on this kernel/user); see foundry/eval/sandbox.py")


def pass_at_ks(results: list[dict], ks=(1, 10, 100)) -> dict[str, float]:
    """Mean over problems of the unbiased pass@k, for each k no larger than every problem's sample count."""
    per = defaultdict(list)
    for r in results:
        per[r["task_id"]].append(bool(r["passed"]))
    if not per:
        return {}
    n_min = min(len(v) for v in per.values())
    return {f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in per.values()) / len(per)
            for k in ks if k <= n_min}


def read_samples(path: Path) -> list[dict]:
    samples = read_records(path)
    for i, s in enumerate(samples):
        if "task_id" not in s or "completion" not in s:
            raise TaskError(f"{path}: sample {i} lacks 'task_id'/'completion'; the format is OpenAI human-eval's "
                            f"JSON lines {{\"task_id\": \"HumanEval/0\", \"completion\": \"    return ...\"}}")
    return samples


def score_samples(samples_path, spec=None, data_dir=None, ks=(1, 10, 100), limits: Limits = Limits(),
                  workers: int | None = None, out_path=None, log=None) -> tuple[dict, Path]:
    """Judge a samples file; write `<samples>_results.jsonl` (atomically); return (pass@k, results path).
    `log` receives the one-line warning when a program ran with only the Python guard."""
    from foundry.eval.spec import get_task

    spec = spec or get_task("humaneval")
    samples_path = Path(samples_path)
    samples = read_samples(samples_path)
    problems = load_problems(spec, data_dir)
    results = check_completions(problems, samples, limits, workers)
    warning = walls_warning(results)
    if warning and log:
        log(warning)
    out_path = Path(out_path) if out_path else samples_path.with_name(samples_path.name + "_results.jsonl")
    write_jsonl(out_path, results)
    return pass_at_ks(results, ks), out_path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


@RUNNERS.register("humaneval")
class HumanEvalRunner:
    """options: n_samples (per problem, default 1), temperature (0 = greedy), ks (pass@k to report),
    timeout (wall seconds per program), workers (parallel children; default the CPU count)."""

    @staticmethod
    def allowed_options(opts: dict) -> tuple:
        return ("n_samples", "temperature", "ks", "timeout", "workers")

    def run(self, spec, lm, ctx: EvalContext):
        if not ctx.allow_code_execution:
            raise TaskError(OPT_IN)
        opts = {**spec.options, **ctx.options}
        n, temp = int(opts.get("n_samples", 1)), float(opts.get("temperature", 0.0))
        if n > 1 and temp == 0:
            raise TaskError(f"task {spec.name}: n_samples={n} with temperature 0 would repeat one greedy sample; "
                            f"set options temperature > 0 (e.g. 0.8 for pass@10)")
        problems = load_problems(spec, ctx.data_dir)
        chosen = limited(list(problems.values()), ctx)
        import torch
        gen = torch.Generator(device=lm.device).manual_seed(ctx.seed)
        prompts = [p["prompt"] for p in chosen for _ in range(n)]
        ctx.log(f"{spec.name}: generating {len(prompts)} completions")
        outs = lm.generate_until(prompts, spec.stop, spec.max_new_tokens, batch_size=ctx.batch_size,
                                 temperature=temp, generator=gen)
        samples = [{"task_id": p["task_id"], "completion": o if o is not None else ""}
                   for p, o in zip([p for p in chosen for _ in range(n)], outs)]
        limits = Limits(timeout=float(opts.get("timeout", 3.0)))
        ctx.log(f"{spec.name}: running {len(samples)} programs in the sandbox")
        results = check_completions(problems, samples, limits, opts.get("workers"))
        warning = walls_warning(results)
        if warning:
            ctx.log(warning)
        rows = [{"id": f"{r['task_id']}/{j % n}", **r, "correct": bool(r["passed"]),
                 "unencodable": o is None} for j, (r, o) in enumerate(zip(results, outs))]
        pk = pass_at_ks(results, tuple(opts.get("ks", (1,))))
        score = pk.get(spec.metric, next(iter(pk.values()), 0.0))
        return {"metric": spec.metric, "score": score, "chance": spec.chance, "n": len(chosen), "n_samples": n,
                **pk, "n_unencodable": sum(r["unencodable"] for r in rows),
                "sandbox_walls": walls_summary(results)}, rows
