"""`python -m foundry.eval` (also `foundry eval`): evaluate a model, list tasks, score samples, compare runs.

    python -m foundry.eval TARGET --tasks mmlu,gsm8k_cot [--limit N] [--num-fewshot K] [--out DIR]
                           [--data-dir DIR] [--device cpu] [--batch-size 16] [--allow-code-execution]
                           [--option TASK.KEY=VALUE ...]
    python -m foundry.eval --list
    python -m foundry.eval score humaneval SAMPLES.jsonl [--k 1,10,100] [--data-dir DIR] [--out RESULTS.jsonl]
    python -m foundry.eval compare A/mmlu.jsonl B/mmlu.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from foundry.eval.data import ENV_VAR

EPILOG = f"""
TARGET is a run directory (out_dir of foundry.train), a checkpoint directory, or a zoo model name.
Data is read from local files only, under --data-dir, else ${ENV_VAR}, else ../shared/data (relative to the
working directory); a missing file fails naming the expected path and format.

other commands:
  python -m foundry.eval --list                               the tasks, their versions and chance levels
  python -m foundry.eval score humaneval SAMPLES.jsonl        judge OpenAI-format samples (task_id, completion)
                                                              in the sandbox; prints pass@k, writes per-sample results
                                                              (--k 1,10,100 --data-dir DIR --out FILE --timeout S
                                                              --workers N)
  python -m foundry.eval compare A.jsonl B.jsonl              item-by-item comparison of two result files
                                                              (McNemar and paired bootstrap)
"""


def _parse_option(text: str):
    try:
        key, value = text.split("=", 1)
        task, opt = key.split(".", 1)
    except ValueError:
        raise SystemExit(f"error: --option {text!r} must look like TASK.KEY=VALUE (e.g. mmlu.score=choice_text)")
    import yaml
    return task, opt, yaml.safe_load(value)


def cmd_list() -> int:
    from foundry.eval import all_tasks

    for name, s in sorted(all_tasks().items()):
        print(f"{name:<18} v{s.version}  {s.kind:<9} chance {s.chance:<6g} {s.description}")
    return 0


def cmd_score(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.eval score",
                                description="Judge completions made elsewhere (OpenAI human-eval sample format).")
    p.add_argument("benchmark", choices=["humaneval"])
    p.add_argument("samples", help="JSON lines with task_id and completion")
    p.add_argument("--k", default="1,10,100", help="pass@k values, comma-separated (those <= samples per task)")
    p.add_argument("--data-dir", default=None, help=f"folder holding humaneval/HumanEval.jsonl.gz (default ${ENV_VAR})")
    p.add_argument("--out", default=None, help="per-sample results (default SAMPLES_results.jsonl)")
    p.add_argument("--timeout", type=float, default=3.0, help="wall seconds per program")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    a = p.parse_args(argv)
    from foundry.eval.humaneval import score_samples
    from foundry.eval.sandbox import Limits

    from foundry.eval.spec import TaskError

    try:
        ks = tuple(int(k) for k in a.k.split(","))
    except ValueError:
        p.error(f"--k {a.k!r}: expected comma-separated integers, e.g. 1,10,100")
    if not os.path.isfile(a.samples):
        print(f"error: {a.samples}: no such samples file", file=sys.stderr)
        return 2
    try:
        passk, out = score_samples(a.samples, data_dir=a.data_dir, ks=ks, limits=Limits(timeout=a.timeout),
                                   workers=a.workers, out_path=a.out,
                                   log=lambda s: print(s, file=sys.stderr, flush=True))
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(passk))
    print(f"per-sample results: {out}")
    return 0


def cmd_compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.eval compare",
                                description="Compare two per-item result files of one task, item by item.")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--key", default="correct", help="per-item field compared (default: correct)")
    a = p.parse_args(argv)
    from foundry.eval.stats import compare_items

    def rows(path):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    try:
        res = compare_items(rows(a.a), rows(a.b), a.key)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot compare {a.a} and {a.b}: {e}", file=sys.stderr)
        return 2
    print(f"n={res['n']} paired items: A {res['score_a']:.4f} vs B {res['score_b']:.4f}")
    if "mcnemar" in res:
        m = res["mcnemar"]
        print(f"McNemar: A right & B wrong {m['a_only']}, B right & A wrong {m['b_only']}, p = {m['p_value']:.4g}")
    bs = res["bootstrap"]
    print(f"paired bootstrap: mean(A - B) = {bs['mean_diff']:+.4f}, 95% CI [{bs['ci95'][0]:+.4f}, {bs['ci95'][1]:+.4f}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "score":
        return cmd_score(argv[1:])
    if argv and argv[0] == "compare":
        return cmd_compare(argv[1:])
    p = argparse.ArgumentParser(prog="python -m foundry.eval", description="Evaluate a model on tasks and probes.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="run directory, checkpoint directory or zoo model name")
    p.add_argument("--tasks", help="comma-separated task names (see --list)")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items of each task")
    p.add_argument("--num-fewshot", type=int, default=None, help="override each task's number of shots")
    p.add_argument("--out", default=None, help="folder for results.json and TASK.jsonl (default TARGET/eval)")
    p.add_argument("--data-dir", default=None, help=f"folder of the evaluation data (default ${ENV_VAR}, "
                                                    f"else ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--allow-code-execution", action="store_true",
                   help="let HumanEval run model-written code (in the sandbox of foundry/eval/sandbox.py)")
    p.add_argument("--option", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="override a task option, e.g. mmlu.score=choice_text or probe_mqar.steps=100")
    a = p.parse_args(argv)
    if a.list:
        return cmd_list()
    if not a.target or not a.tasks:
        p.error("TARGET and --tasks are required (or --list / score / compare)")
    from foundry.eval import TaskError, evaluate
    from foundry.eval.lm import TargetError
    from foundry.safeio import DamagedFileError, DiskFullError

    options: dict = {}
    for text in a.option:
        task, key, value = _parse_option(text)
        options.setdefault(task, {})[key] = value
    try:
        results = evaluate(a.target, a.tasks, limit=a.limit, num_fewshot=a.num_fewshot, out_dir=a.out,
                           device=a.device, data_dir=a.data_dir, batch_size=a.batch_size,
                           allow_code_execution=a.allow_code_execution, seed=a.seed, options=options,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    except (TaskError, TargetError, FileNotFoundError, KeyError, DiskFullError, DamagedFileError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    from foundry.eval import format_summary
    print()
    for s in results.values():
        print(format_summary(s))
    print(f"results: {next(iter(results.values()))['items_path'].rsplit('/', 1)[0]}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
