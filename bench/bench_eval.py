"""Eval benchmarks (figures for BENCHMARKS.md, section Eval).

    python bench/bench_eval.py [--data-dir ../shared/data] [--repeats 3] [--workers 2] [--questions 128]
                               [--only humaneval|mmlu|probes] [--device cpu|cuda] [--threads 1]

1. HumanEval sandbox: the 164 canonical solutions, each in its own contained child, `--workers` at a time.
   Target: <= 15 s on 2 cores (pin with `taskset -c 0,1` to measure exactly 2).
2. MMLU letter scoring with a tiny random char-level model (2 layers, 64 wide), 0-shot, three ways in one
   process, alternating, as ratios (the machine's speed drifts; ratios measured side by side are stable):
   one request per forward (4 per question), one question per forward (its 4 continuations share a row),
   and batches of questions. Target: batched >= 3x faster than one item at a time. All three must give the
   same log-likelihoods. `--device cuda` measures on a GPU.
3. `--only probes`: the default probe tasks on the default model config, with attention and with it crippled
   (score, chance and seconds per probe: what a CPU sweep pays).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def bench_humaneval(data_dir, workers, repeats):
    """The 164 canonical solutions under each wall set, alternating per repeat (the machine drifts): all walls
    (the default), the walls before Landlock and the mount view (namespaces, rlimits, guard), the guard alone."""
    from foundry.eval.humaneval import check_completions, load_problems
    from foundry.eval.sandbox import Limits
    from foundry.eval.spec import get_task

    probs = load_problems(get_task("humaneval"), data_dir)
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in probs.items()]
    sets = {"all_walls": Limits(), "no_landlock_no_mountns": Limits(landlock=False, mount_namespace=False),
            "guard_only": Limits(landlock=False, mount_namespace=False, network_namespace=False)}
    times = {k: [] for k in sets}
    passed, walls = {}, {}
    for _ in range(repeats):
        for name, limits in sets.items():
            t0 = time.perf_counter()
            res = check_completions(probs, samples, limits, workers=workers)
            times[name].append(time.perf_counter() - t0)
            passed[name] = sum(r["passed"] for r in res)
            walls[name] = " ".join(res[0]["walls"])
    best = {k: min(v) for k, v in times.items()}
    return {"problems": len(samples), "workers": workers,
            **{k: {"passed": passed[k], "walls": walls[k], "seconds": [round(t, 2) for t in times[k]],
                   "best_s": round(best[k], 2)} for k in sets},
            "all_walls_vs_before": round(best["all_walls"] / best["no_landlock_no_mountns"], 3)}


def bench_mmlu(data_dir, n_questions, repeats, device="cpu", batch_size=32):
    import torch

    from foundry.config import ModelConfig
    from foundry.data.tokenize import CharTokenizer
    from foundry.eval.data import read_records
    from foundry.eval.lm import LM
    from foundry.eval.mmlu import build_prompt, continuations
    from foundry.model import GPT

    recs = read_records(os.path.join(data_dir, "mmlu", "mmlu_test.jsonl"))[:n_questions]
    per_q = [[(build_prompt(r, []), c) for c in continuations(r, "letter")] for r in recs]
    reqs = [x for q in per_q for x in q]
    tok = CharTokenizer().fit([c + k for c, k in reqs])
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=1024, position="rope",
                            vocab_size=tok.vocab_size)).to(device).eval()
    lm = LM(model, tok)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    modes = {  # one request per forward (4 per question) / one question per forward / batches of questions
        "per_request": lambda: [lm.loglikelihood([r], batch_size=1)[0] for r in reqs],
        "per_question": lambda: [x for q in per_q for x in lm.loglikelihood(q, batch_size=1)],
        "batched": lambda: lm.loglikelihood(reqs, batch_size=batch_size),
    }
    timed(lambda: lm.loglikelihood(reqs[:8], batch_size=4))  # warm-up
    times = {m: [] for m in modes}
    outs = {}
    for _ in range(repeats):
        for m, fn in modes.items():
            t, outs[m] = timed(fn)
            times[m].append(t)
    diff = max(abs(a.logprob - b.logprob) for m in modes for a, b in zip(outs[m], outs["batched"]))
    ratio = lambda m: [round(a / b, 2) for a, b in zip(times[m], times["batched"])]
    return {"device": device, "questions": len(recs), "continuations": len(reqs), "batch_size": batch_size,
            "seconds": {m: [round(t, 3) for t in v] for m, v in times.items()},
            "speedup_vs_per_question": ratio("per_question"), "speedup_vs_per_request": ratio("per_request"),
            "max_abs_logprob_diff": diff, "threads": torch.get_num_threads()}


def bench_probes(ablations=("none", "self")):
    """The three default probe tasks on the default model config (4 layers, 4 heads, 128 wide), with
    attention and with attention crippled (each token sees only itself): score, chance, seconds."""
    from foundry.config import ModelConfig
    from foundry.eval import evaluate

    out = {}
    for task in ("probe_mqar", "probe_copy", "probe_arithmetic"):
        for abl in ablations:
            t0 = time.perf_counter()
            r = evaluate(ModelConfig(), [task], options={task: {"ablation": abl}})[task]
            out[f"{task}/{abl}"] = {"score": round(r["score"], 3), "chance": round(r["chance"], 3),
                                    "seconds": round(time.perf_counter() - t0, 1)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("FOUNDRY_EVAL_DATA", os.path.join("..", "shared", "data")))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the MMLU part")
    p.add_argument("--only", choices=["humaneval", "mmlu", "probes"], default=None)
    p.add_argument("--device", default="cpu", help="device for the MMLU part (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
           "cpus_available": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    if a.only in (None, "humaneval"):
        out["humaneval_canonical"] = bench_humaneval(a.data_dir, a.workers, a.repeats)
    if a.only in (None, "mmlu"):
        out["mmlu_batched_vs_single"] = bench_mmlu(a.data_dir, a.questions, a.repeats, a.device, a.batch_size)
    if a.only == "probes":  # minutes on CPU: only when asked for
        out["probes_default_config"] = bench_probes()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
