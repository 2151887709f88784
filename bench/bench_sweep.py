"""Sweep benchmarks for BENCHMARKS.md (## Sweep). CPU only; every figure comes from `python -m foundry.cli.sweep`.

    python bench/bench_sweep.py [--out runs/bench_sweep] [--repeats 2] [--only planted,jobs,halving]

1. planted: a tiny model whose learning rate is 10x too small for its budget; mutants `lr x0.01`, `lr x0.03`
   (worse by construction) and `lr x10` (better by construction), 3 paired seeds, --promote. The answer is
   known: lr_x10 must be promoted. Then the baseline against itself under other seeds (`seed 1000`): nothing
   may be promoted.
2. jobs: 4 equal trials (the baseline and three `seed` null mutants, one seed each). Wall time of the whole
   sweep, process start included, for --jobs 1 with both threads, --jobs 2 with the default split (1 thread
   each) and --jobs 2 with 2 threads each (oversubscribed). Repeated, alternating, ratios reported.
3. halving: 6 learning-rate mutants, 2 seeds, trained to the full budget vs successive halving (eta 3, 3 rungs):
   the winner of each and the fraction of training tokens halving spent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TINY = """\
base_model: v1
model_args: {{n_layer: 2, n_head: 2, n_embd: {width}, block_size: {block}, bias: false}}
training: {{max_iters: {iters}, learning_rate: 3.0e-4, min_lr: 3.0e-5, batch_size: 8, warmup_iters: 10,
           eval_interval: {eval_interval}, eval_iters: 2, log_interval: 10, sample_tokens: 0, device: cpu}}
out_dir: runs/tiny
"""


CODE: list[Path] = []  # --code DIR: run the sweeps from another checkout (before/after comparisons)


def sweep(out: Path, args: list[str], code: Path | None = None) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    out = out.resolve()
    cmd = [sys.executable, "-m", "foundry.cli.sweep", *args, "--out", str(out / "sweep"),
           "--store", str(out / "store.sqlite"), "--experiments", str(out / "experiments"), "--quiet"]
    code = code or (CODE[0] if CODE else None)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=code,
                       env={**os.environ, "PYTHONPATH": str(code.resolve())} if code else None)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return wall, json.loads((out / "sweep" / "results.json").read_text())


def step_seconds(metrics: Path) -> tuple[float, int]:
    """(seconds of training steps, times train() started) of one trial directory's metrics.jsonl: the logged
    windows' ms/iteration times their length, each iteration counted once (a continued run re-logs some)."""
    windows, starts = {}, 0
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        starts += r.get("event") == "start"
        if "ms_per_iter" in r:
            windows[int(r["iter"])] = r["ms_per_iter"]
    its = sorted(windows)
    return sum(windows[i] * (i - prev) for prev, i in zip([0] + its, its)) / 1000, starts


def overhead(out: Path, wall: float, jobs: int, ladder: list[int]) -> dict:
    """Fixed cost per trial of a finished sweep in `out`: the jobs' wall time not spent in training steps
    (process and worker start, imports, data, model build, evaluation, checkpoints, the store, the report,
    idle workers), per trial execution (a halving trial counts once per rung it ran: `ladder`, the rungs'
    iterations); and inside the workers alone (each trial's recorded wall time minus its steps)."""
    import sqlite3

    db = sqlite3.connect(out / "store.sqlite")
    steps = execs = in_worker = 0.0
    rows = db.execute("SELECT wall_seconds, artifacts, metrics, seed, status FROM runs WHERE status != 'failed'")
    rows = rows.fetchall()
    halved = {seed for *_, seed, status in rows if status == "pruned"} or {seed for *_, seed, _ in rows}
    for wall_s, art, metrics, seed, _ in rows:
        m = Path(json.loads(art)["metrics"])
        if m.is_file():
            s, _ = step_seconds(m)  # a confirmation seed (never halved) runs once, to the full budget
            n = sum(r <= json.loads(metrics).get("iters", 0) for r in ladder) if seed in halved else 1
            steps, execs, in_worker = steps + s, execs + n, in_worker + (wall_s or 0.0) - s
    db.close()
    return {"trial_runs": int(execs), "step_seconds": round(steps, 2),
            "overhead_per_trial_s": round((wall * jobs - steps) / max(execs, 1), 3),
            "in_worker_overhead_per_trial_s": round(in_worker / max(execs, 1), 3)}


def before_after(root: Path, repeats: int, before: Path) -> dict:
    """The --jobs 2 sweep and the halving sweep, from the checkout `before` and from this one, alternating:
    wall time of each whole sweep and its fixed cost per trial."""
    root = root.resolve()
    base_j = base_file(root, width=64, block=64, iters=300, eval_interval=300)
    base_h = base_file(root, width=32, block=32, iters=270, eval_interval=30)
    kinds = {"jobs": ["seed", "1000", "2000", "3000", "--base", str(base_j), "--seeds", "1", "--jobs", "2"],
             "halving": ["lr", "x0.01", "x0.03", "x0.1", "x0.3", "x3", "x10", "--base", str(base_h), "--seeds", "2",
                         "--jobs", "2", "--halving", "--eta", "3", "--rungs", "3"]}
    ladders = {"jobs": [300], "halving": [30, 90, 270]}
    res: dict = {k: {"before": [], "after": []} for k in kinds}
    for r in range(repeats):
        for kind, args in kinds.items():
            for side, code in (("before", before), ("after", Path(__file__).resolve().parents[1]))[::1 - 2 * (r % 2)]:
                d = root / f"ba_{kind}_{side}"
                w, out = sweep(d, args, code)
                row = {"wall": round(w, 2), "winner": out["ranking"][0], **overhead(d, w, 2, ladders[kind]),
                       "load": os.getloadavg()[0]}
                res[kind][side].append(row)
                print(f"  {kind} repeat {r + 1} {side}: {json.dumps(row)}", flush=True)
    for kind in kinds:
        b, a = res[kind]["before"], res[kind]["after"]
        res[kind]["wall_ratio_before_over_after"] = [round(x["wall"] / y["wall"], 3) for x, y in zip(b, a)]
    return res


def base_file(out: Path, **kw) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"base_{'_'.join(f'{k}{v}' for k, v in kw.items())}.yaml"
    p.write_text(TINY.format(**kw))
    return p


def planted(root: Path) -> dict:
    base = base_file(root, width=32, block=32, iters=150, eval_interval=50)
    wall, res = sweep(root / "planted", ["lr", "x0.01", "x0.03", "x10", "--base", str(base), "--seeds", "3",
                                         "--jobs", "2", "--promote"])
    wall0, null = sweep(root / "null", ["seed", "1000", "--base", str(base), "--seeds", "3", "--jobs", "2",
                                        "--promote"])
    return {"planted": {"ranking": res["ranking"], "promoted": res["decision"]["promote"],
                        "winner": res["decision"]["winner"], "p": res["decision"]["test"]["p"],
                        "gain": res["decision"]["test"]["mean"], "wall": wall,
                        "bpb": {k: res["results"][k]["mean_bpb"] for k in res["ranking"]}},
            "null": {"promoted": null["decision"]["promote"], "winner": null["decision"]["winner"],
                     "p": null["decision"]["test"]["p"], "gain": null["decision"]["test"]["mean"], "wall": wall0}}


def jobs(root: Path, repeats: int) -> dict:
    base = base_file(root, width=64, block=64, iters=300, eval_interval=300)
    variants = ["seed", "1000", "2000", "3000", "--base", str(base), "--seeds", "1"]
    setups = {"jobs1_threads2": ["--jobs", "1", "--threads", "2"], "jobs2_default": ["--jobs", "2"],
              "jobs2_threads2": ["--jobs", "2", "--threads", "2"]}
    walls: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(repeats):
        for name, extra in setups.items():
            w, _ = sweep(root / f"jobs_{name}", variants + extra)
            walls[name].append(w)
            print(f"  jobs repeat {r + 1}: {name} {w:.1f}s", flush=True)
    seq = walls["jobs1_threads2"]
    return {"walls": walls,
            "ratio_sequential_over_jobs2": [a / b for a, b in zip(seq, walls["jobs2_default"])],
            "ratio_oversubscribed_over_default": [a / b for a, b in zip(walls["jobs2_threads2"],
                                                                          walls["jobs2_default"])]}


def halving(root: Path) -> dict:
    base = base_file(root, width=32, block=32, iters=270, eval_interval=30)
    common = ["lr", "x0.01", "x0.03", "x0.1", "x0.3", "x3", "x10", "--base", str(base), "--seeds", "2",
              "--jobs", "2"]
    w_full, full = sweep(root / "full", common)
    w_sh, sh = sweep(root / "halving", common + ["--halving", "--eta", "3", "--rungs", "3"])
    return {"full": {"winner": full["ranking"][0], "ranking": full["ranking"], "wall": w_full,
                     "tokens": full["compute"]["tokens"]},
            "halving": {"winner": sh["ranking"][0], "ranking": sh["ranking"], "wall": w_sh,
                        "tokens": sh["compute"]["tokens"], "fraction": sh["compute"]["fraction"]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_sweep")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", default="planted,jobs,halving",
                   help="comma-separated parts: planted, jobs, halving, before_after (needs --before)")
    p.add_argument("--before", type=Path, help="before_after: a checkout of the code to compare against")
    p.add_argument("--code", type=Path, help="run the sweeps from this checkout instead of this one")
    args = p.parse_args()
    root = Path(args.out)
    if args.code:
        CODE.append(args.code)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "load_before": os.getloadavg()}
    for part in args.only.split(","):
        print(f"== {part}", flush=True)
        results[part] = {"planted": planted, "halving": halving,
                         "before_after": lambda r: before_after(r, args.repeats, args.before)}.get(
            part, lambda r: jobs(r, args.repeats))(root)
        print(json.dumps(results[part], indent=2), flush=True)
        results["load_after"] = os.getloadavg()
        (root / "bench_sweep.json").write_text(json.dumps(results, indent=2))  # after each part
    print(f"written {root / 'bench_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
