"""Training benchmarks on nanoGPT's CPU Tiny Shakespeare configuration (experiments/shakespeare_char_cpu.yaml).

    python bench/bench_train.py speed [--rounds 6 --iters 150]  foundry's CLI vs the reference, alternating processes
    python bench/bench_train.py e2e [--rounds 4 --iters 2000]   whole runs (evaluation, checkpoints, sample), wall time
    python bench/bench_train.py full [--seeds 1337 1 2]         both full 2,000-iteration runs per seed: val loss, speed
    python bench/bench_train.py v1v2                            v2 vs v1 at the same parameter count and iterations
    python bench/bench_train.py steps                           where a step's time goes (optimiser, clip, model)
    python bench/bench_train.py dtype [--widths 128 384]        fp32 vs bf16 autocast training steps on this CPU
    python bench/bench_train.py dtypeloss [--seeds 1 2 3]       bf16 vs fp32 final val loss, paired seeds
    python bench/bench_train.py attn                            explicit causal attention vs SDPA's kernel, by T
    python bench/bench_train.py malloc                          training steps with and without glibc malloc tuning
    python bench/bench_train.py omp                             training steps under libgomp's wait policies
    python bench/bench_train.py reference                       the stand-in alone, 2,000 iterations, val loss
    python bench/bench_train.py evalrun RUN_DIR...              a run's val loss on its windows and the whole split

The reference is bench/nanogpt_ref.py, an independent plain-PyTorch re-implementation of the per-iteration work
of nanoGPT's CPU run (nanoGPT's code is not in this repository), or, with --nanogpt DIR, nanoGPT's own train.py
from a checkout, run with the README's CPU flags. `speed` and `full` run each side as its own process, as a user
would (`python -m foundry.train ...` and `python train.py ...`), alternating rounds so that the drift of the 2
shared cores hits both alike, and report medians and the ratio. `steps` and `dtype` time parts in one process.
Results are appended as JSON lines to runs/bench/bench_train.jsonl; BENCHMARKS.md quotes them.

Data: --data DIR (a prepared character-level directory), else one is written to runs/bench/shakespeare_char from
the embedded Tiny Shakespeare in the documented prepared format (first 90% train, last 10% validation, uint16).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
EXPERIMENT = REPO / "experiments" / "shakespeare_char_cpu.yaml"
OUT = REPO / "runs" / "bench"
NANOGPT_RECORDED = {"ms_per_iter": 47.0, "tokens_per_sec": 16200, "val_loss": 1.8857}  # measured here, the issue says


def prepare(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    d = OUT / "shakespeare_char"
    if (d / "meta.json").is_file():
        return d
    from foundry.data import embedded
    from foundry.data.tokenize import CharTokenizer

    text = embedded.load_text()
    tok = CharTokenizer().fit(text)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = int(len(ids) * 0.9)
    d.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(d / "train.bin")
    ids[n:].tofile(d / "val.bin")
    tok.save(d / "tokenizer.json")
    (d / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
                                             "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n,
                                             "fingerprint": embedded.SHA256[:16]}))
    return d


THREADS: list[str] = []  # --threads N adds training.num_threads=N here
CHILD_ENV: dict[str, str] = {}  # --omp-wait POLICY: OMP_WAIT_POLICY for both sides' processes


def config(data: Path, out: str, extra: list[str] = ()):
    from foundry.config import load_experiment

    return load_experiment(EXPERIMENT, [f"data.path={data}", f"out_dir={OUT / out}", *THREADS, *extra])


def record(kind: str, **row) -> dict:
    row = {"bench": kind, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "threads": torch.get_num_threads(), **row}
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "bench_train.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    return row


def foundry_run(cfg, iters: int | None = None) -> tuple[dict, list[float]]:
    """Train with foundry's real loop; returns the summary and the per-window ms/iteration."""
    import shutil

    from foundry.train import read_metrics, train

    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    if iters is not None:
        cfg = cfg.replace({"training.max_iters": iters, "training.lr_decay_iters": 2000, "training.eval_iters": 1,
                           "training.sample_tokens": 0})
    s = train(cfg, quiet=True)
    ms = [r["ms_per_iter"] for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl") if "ms_per_iter" in r]
    return s, ms


def reference(data: Path, iters: int, threads: int):
    from nanogpt_ref import NanoGPTReference

    torch.set_num_threads(threads)
    ref = NanoGPTReference(str(data), 65)
    t = time.perf_counter()
    losses = [ref.step() for _ in range(iters)]
    return ref, (time.perf_counter() - t) / iters * 1000, losses


# --------------------------------------------------------------------------------------------------
# Side by side, one process per run (as a user runs nanoGPT and foundry): each keeps its own allocator,
# threads and warm-up, and the two alternate so that the machine's drift hits both alike.
# --------------------------------------------------------------------------------------------------
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
NANOGPT_VAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def child_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children: on cores other jobs share, the CPU a run
    consumed varies far less than its wall time (which counts the time others held the cores)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def foundry_proc(data: Path, out: str, iters: int, seed: int | None = None, extra: list[str] = (),
                 whole: bool = False) -> dict:
    """`python -m foundry.train` on the experiment in a fresh process; per-window ms/iteration, the summary and
    the process's wall time. `whole`: the run exactly as a user starts it (evaluations, checkpoints, the final
    sample, the experiment store, printed progress); otherwise a speed round (no sample, a one-batch final
    evaluation) unless it is the full 2,000 iterations."""
    import shutil

    from foundry.train import read_metrics

    out_dir = OUT / out
    shutil.rmtree(out_dir, ignore_errors=True)
    sets = [f"data.path={data}", f"out_dir={out_dir}", f"training.max_iters={iters}", *THREADS, *extra]
    if seed is not None:
        sets.append(f"training.seed={seed}")
    if iters < 2000 and not whole:
        sets += ["training.sample_tokens=0", "training.eval_iters=1"]
    cmd = [sys.executable, "-m", "foundry.train", str(EXPERIMENT)] + ([] if whole else ["--no-store", "--quiet"])
    for kv in sets:
        cmd += ["--set", kv]
    env = {**os.environ, "FOUNDRY_STORE": str(OUT / "bench_store.sqlite"), **CHILD_ENV}
    t, cpu = time.perf_counter(), child_cpu_seconds()
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL if whole else None)
    wall, cpu = time.perf_counter() - t, child_cpu_seconds() - cpu
    rows = read_metrics(out_dir / "metrics.jsonl")
    ms = [r["ms_per_iter"] for r in rows if "ms_per_iter" in r]
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"ms_windows": ms, "ms_per_iter": statistics.median(ms[1:] or ms), "summary": summary, "wall_s": wall,
            "cpu_s": cpu}


def write_nanogpt_meta(data: Path) -> None:
    """nanoGPT reads the vocabulary size from meta.pkl in its data directory (else it pads to 50,304)."""
    import pickle

    from foundry.data.tokenize import load_tokenizer

    if (data / "meta.pkl").is_file():
        return
    meta = json.loads((data / "meta.json").read_text())
    tok = load_tokenizer(data / meta["tokenizer"])
    itos = {i: tok.decode([i]) for i in range(meta["vocab_size"])}
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": meta["vocab_size"], "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)


def reference_proc(args, data: Path, iters: int, seed: int = 1337, evaluate: bool = False, whole: bool = False,
                   out: str = "nanogpt_out") -> dict:
    """The reference in a fresh process: nanoGPT's own train.py when --nanogpt DIR is given, else the stand-in.
    Returns per-iteration ms (nanoGPT's printed `time`, which includes evaluation on eval iterations: the
    median ignores those) and, with `evaluate`, the final validation loss. `whole`: nanoGPT's README run as
    is (its evaluation every 250 iterations, on train and validation batches, and its checkpoints)."""
    threads = next((int(kv.split("=")[1]) for kv in THREADS if kv.startswith("training.num_threads=")), 2)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **CHILD_ENV}
    if args.nanogpt:
        if seed != 1337:  # its train.py seeds torch with 1337 (+ the DDP rank) and has no seed option
            raise SystemExit(f"--nanogpt: nanoGPT's train.py always seeds 1337; --seeds {seed} needs the stand-in")
        write_nanogpt_meta(data)
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
               "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
               "--n_head=4", "--n_embd=128", f"--max_iters={iters}", "--lr_decay_iters=2000", "--dropout=0.0",
               f"--dataset={data.resolve()}", f"--out_dir={(OUT / out).resolve()}",
               f"--eval_interval={250 if evaluate or whole else 10 ** 9}"]
        cwd = args.nanogpt
    else:
        cmd = [sys.executable, str(REPO / "bench" / "nanogpt_ref.py"), "--data", str(data), "--iters", str(iters),
               "--threads", str(threads), "--seed", str(seed), "--eval-windows", str(240 if evaluate or whole else 0)]
        cwd = REPO
    t, cpu = time.perf_counter(), child_cpu_seconds()
    proc = subprocess.run(cmd, check=True, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, child_cpu_seconds() - cpu
    ms, val = [], {}
    for line in proc.stdout.splitlines():
        if m := ITER_LINE.match(line):
            if int(m.group(1)) % 250 or not (evaluate or whole):  # nanoGPT's eval iterations time the evaluation
                ms.append(float(m.group(3)))
        elif m := NANOGPT_VAL.match(line):
            val = {"val_loss": float(m.group(3)), "at_iter": int(m.group(1))}
        elif line.startswith("{"):
            val = json.loads(line)
    if not ms:
        raise RuntimeError(f"no iteration lines from {' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    # foundry logs the mean of each 10-iteration window; the reference's per-iteration times are grouped the same
    # way (after the first 10), so that a stall (another process taking the core) weighs the same on both sides
    # (a median of single iterations would step over stalls that a window mean includes)
    steady = ms[10:] or ms
    windows = [statistics.mean(steady[i:i + 10]) for i in range(0, len(steady) - 9, 10)] or [statistics.mean(steady)]
    return {"ms_per_iter": statistics.median(windows), "ms_per_iter_single_median": statistics.median(steady),
            "wall_s": wall, "cpu_s": cpu, **val}


def side_by_side(args, data, whole: bool) -> dict:
    """R rounds of foundry's CLI and the reference in fresh processes, the order swapped every round (ABBA...),
    so that the drift of the shared cores hits both alike; per-round ratios of ms/iteration and wall time."""
    ref_name = "nanoGPT" if args.nanogpt else "stand-in"
    rounds, load = [], [os.getloadavg()[0]]
    for r in range(args.rounds):
        kind = f"{'e2e' if whole else 'speed'}_{os.getpid()}"  # own run directories: benchmarks may run at once
        sides = [("foundry", lambda: foundry_proc(data, kind, args.iters, whole=whole)),
                 ("reference", lambda: reference_proc(args, data, args.iters, whole=whole, out=f"nanogpt_{kind}"))]
        got = dict((name, run()) for name, run in (sides if r % 2 == 0 else sides[::-1]))
        load.append(os.getloadavg()[0])
        f, ref = got["foundry"], got["reference"]
        rounds.append({"foundry_ms": f["ms_per_iter"], "reference_ms": ref["ms_per_iter"], "foundry_wall_s": f["wall_s"],
                       "reference_wall_s": ref["wall_s"], "step_ratio": ref["ms_per_iter"] / f["ms_per_iter"],
                       "wall_ratio": ref["wall_s"] / f["wall_s"], "foundry_cpu_s": f["cpu_s"],
                       "reference_cpu_s": ref["cpu_s"], "cpu_ratio": ref["cpu_s"] / f["cpu_s"],
                       "first": "foundry" if r % 2 == 0 else "reference",
                       "load_after": load[-1]})
        print(f"round {r + 1}/{args.rounds}: foundry {f['ms_per_iter']:.1f} ms/it {f['wall_s']:.1f} s, {ref_name} "
              f"{ref['ms_per_iter']:.1f} ms/it {ref['wall_s']:.1f} s: per step {rounds[-1]['step_ratio']:.3f}x, "
              f"wall {rounds[-1]['wall_ratio']:.3f}x, CPU {f['cpu_s']:.1f} vs {ref['cpu_s']:.1f} s: "
              f"{rounds[-1]['cpu_ratio']:.3f}x (load {load[-1]:.1f})", flush=True)

    def spread(key):
        v = [x[key] for x in rounds]
        return {"median": statistics.median(v), "mean": statistics.mean(v), "min": min(v), "max": max(v),
                "sd": statistics.stdev(v) if len(v) > 1 else 0.0}

    f, ref = statistics.median(x["foundry_ms"] for x in rounds), statistics.median(x["reference_ms"] for x in rounds)
    tokens = 12 * 64
    return dict(reference=ref_name, foundry_ms_per_iter=f, reference_ms_per_iter=ref,
                foundry_tokens_per_sec=tokens / f * 1000, reference_tokens_per_sec=tokens / ref * 1000,
                step_ratio=spread("step_ratio"), wall_ratio=spread("wall_ratio"), cpu_ratio=spread("cpu_ratio"),
                rounds=args.rounds, iters=args.iters,
                load_avg_1min={"min": min(load), "max": max(load)}, per_round=rounds,
                omp_wait_policy=CHILD_ENV.get("OMP_WAIT_POLICY", "each side's default"),
                cpu_capability=torch.backends.cpu.get_cpu_capability())


def cmd_speed(args, data):
    """Per-step speed: R rounds of N iterations (no evaluation), alternating fresh processes."""
    record("speed", **side_by_side(args, data, whole=False))


def cmd_e2e(args, data):
    """End to end: each side's whole run as a user starts it (start-up, evaluations, checkpoints, foundry's final
    sample and store record), N iterations (default 2,000), alternating fresh processes; wall and per-step ratios."""
    record("e2e", **side_by_side(args, data, whole=True))


def whole_split_loss(run_dir: Path, data: Path) -> float:
    from foundry.checkpoint import load_run
    from foundry.data.dataset import load_data
    from foundry.train import evaluate

    run = load_run(run_dir, which="last")
    whole = evaluate(run.model, load_data(data), run.config.replace({"training.eval_iters": 10 ** 6}),
                     torch.device("cpu"), torch.autocast("cpu", enabled=False))
    return whole["val_loss"]


def cmd_full(args, data):
    """Both full 2,000-iteration runs (fresh processes, one after the other): final validation loss and speed."""
    seeds = args.seeds or [1337]
    rows = []
    for seed in seeds:
        f = foundry_proc(data, f"full_v1_s{seed}", 2000, seed)
        r = reference_proc(args, data, 2000, seed, evaluate=True)
        row = {"seed": seed, "foundry_val_loss": f["summary"]["val_loss"], "foundry_val_bpb": f["summary"]["val_bpb"],
               "foundry_val_loss_whole_split": whole_split_loss(OUT / f"full_v1_s{seed}", data),
               "foundry_ms_per_iter": f["ms_per_iter"], "foundry_wall_s": f["wall_s"],
               "reference_val_loss": r.get("val_loss"), "reference_val_loss_whole_split": r.get("val_loss_whole_split"),
               "reference_ms_per_iter": r["ms_per_iter"], "reference_wall_s": r["wall_s"],
               "speedup": r["ms_per_iter"] / f["ms_per_iter"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    agg = {}
    for k in ("foundry_val_loss", "foundry_val_loss_whole_split", "reference_val_loss", "reference_val_loss_whole_split",
              "speedup"):
        vals = [r[k] for r in rows if r[k] is not None]
        if vals:
            agg[k + "_mean"] = statistics.mean(vals)
            agg[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    record("full", reference="nanoGPT" if args.nanogpt else "stand-in", runs=rows, **agg,
           recorded_nanogpt=NANOGPT_RECORDED)


def cmd_v1v2(args, data):
    rows = {}
    for name, extra in (("v1", []), ("v2", ["base_model=v2", "model_args.mlp_ratio=3"])):
        cfg = config(data, f"full_{name}", extra)
        done = Path(cfg.out_dir) / "summary.json"
        if args.iters is None and done.is_file() and json.loads(done.read_text())["iters"] == 2000:
            from foundry.train import read_metrics  # reuse the full run of `full` (same experiment, same out_dir)

            s = json.loads(done.read_text())
            ms = [r["ms_per_iter"] for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl") if "ms_per_iter" in r]
        else:
            s, ms = foundry_run(cfg, args.iters)
        from foundry.checkpoint import load_run

        model = load_run(cfg.out_dir).model
        rows[name] = {"val_loss": s["val_loss"], "best_val_loss": s["best_val_loss"], "val_bpb": s["val_bpb"],
                      "params_total": sum(p.numel() for p in model.parameters()),
                      "params_blocks": sum(p.numel() for n, p in model.named_parameters()
                                           if n.startswith(("blocks.", "norm_f."))),
                      "ms_per_iter": statistics.median(ms), "iters": s["iters"]}
    record("v1v2", **rows, v2_better=rows["v2"]["val_loss"] < rows["v1"]["val_loss"])


def cmd_reference(args, data):
    """The stand-in alone for 2,000 iterations, evaluated on foundry's declared windows and on the whole split."""
    from foundry.data.dataset import load_data

    cfg = config(data, "reference")
    ref, ms, losses = reference(data, args.iters or 2000, cfg.training.num_threads)
    val = load_data(data).val
    n_all = (len(val) - 1) // cfg.model_args.block_size
    record("reference", ms_per_iter=ms, final_train_loss=float(np.mean(losses[-10:])),
           val_loss_declared_windows=ref.val_loss(val, cfg.training.eval_iters * cfg.training.batch_size),
           val_loss_whole_split=ref.val_loss(val, n_all), iters=len(losses))


def cmd_evalrun(args, data):
    """A finished foundry run's validation loss on its declared windows and on the whole validation split."""
    from foundry.checkpoint import load_run
    from foundry.data.dataset import load_data
    from foundry.train import evaluate

    rows = {}
    for run_dir in args.runs:
        run = load_run(run_dir, which="last")
        d = load_data(data)
        declared = evaluate(run.model, d, run.config, torch.device("cpu"), torch.autocast("cpu", enabled=False))
        whole = evaluate(run.model, d, run.config.replace({"training.eval_iters": 10**6}), torch.device("cpu"),
                         torch.autocast("cpu", enabled=False))
        rows[str(run_dir)] = {"val_loss_declared_windows": declared["val_loss"], "val_loss_whole_split": whole["val_loss"],
                              "val_bpb_whole_split": whole["val_bpb"], "whole_split_tokens": whole["val_tokens"]}
    record("evalrun", **rows)


def cmd_steps(args, data):
    """Time the parts of one step in foundry's configuration vs the reference's (medians of interleaved runs)."""
    from foundry.data.dataset import load_data
    from foundry.data.sampler import make_sampler
    from foundry.model import GPT
    from foundry.optim import build_optimizer
    from nanogpt_ref import NanoGPTReference

    from foundry.train import tune_cpu_malloc

    cfg = config(data, "steps", ["model_args.vocab_size=65"])
    torch.set_num_threads(cfg.training.num_threads)
    tune_cpu_malloc()  # for both sides alike: this compares the code of one step, not the processes
    model = GPT(cfg.model_args)
    from foundry.cpugemm import onednn_linear_rule, use_onednn_linears
    from foundry.hostcpu import host_cpu
    if onednn_linear_rule(host_cpu())[0] and not args.compile:  # as build_run does for a CPU training run
        use_onednn_linears(model)
    opt = build_optimizer(model, cfg.training, "cpu")
    sampler = make_sampler(load_data(data), cfg)
    ref = NanoGPTReference(str(data), 65)
    if args.nanogpt:  # nanoGPT's own model and optimiser (its model.py, imported from the checkout, not copied)
        sys.path.insert(0, str(args.nanogpt.resolve()))
        import model as nanogpt_model

        torch.manual_seed(1337)
        ref.model = nanogpt_model.GPT(nanogpt_model.GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4,
                                                              n_embd=128, dropout=0.0, bias=False))
        ref.opt = ref.model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    step_model = model
    if args.compile:  # foundry's side through torch.compile (training.compile: true); compilation is timed apart
        t = time.perf_counter()
        step_model = torch.compile(model)
        x, y = sampler.next_batch()
        step_model(x, y)[0].backward()
        model.zero_grad(set_to_none=True)
        print(f"compile: {time.perf_counter() - t:.1f} s", flush=True)
    parts = {k: [] for k in ("f_batch", "f_fwd_bwd", "f_clip", "f_opt", "r_batch", "r_fwd_bwd", "r_clip", "r_opt")}

    def timed(key, fn):
        t = time.perf_counter()
        out = fn()
        parts[key].append((time.perf_counter() - t) * 1000)
        return out

    for i in range(args.iters):
        x, y = timed("f_batch", sampler.next_batch)
        timed("f_fwd_bwd", lambda: step_model(x, y)[0].backward())
        timed("f_clip", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True))
        timed("f_opt", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        xr, yr = timed("r_batch", ref.get_batch)
        timed("r_fwd_bwd", lambda: (lambda out: out[1] if isinstance(out, tuple) else out)(ref.model(xr, yr)).backward())
        timed("r_clip", lambda: torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 1.0))
        timed("r_opt", lambda: (ref.opt.step(), ref.opt.zero_grad(set_to_none=True)))
    med = {k: statistics.median(v[3:]) for k, v in parts.items()}
    f_total, r_total = (sum(v for k, v in med.items() if k.startswith(p)) for p in ("f_", "r_"))
    ratios = sorted(sum(parts[k][i] for k in parts if k.startswith("r_")) / sum(parts[k][i] for k in parts
                    if k.startswith("f_")) for i in range(3, args.iters))
    record("steps", **med, foundry_step_ms=f_total, reference_step_ms=r_total, speedup=r_total / f_total,
           step_ratio_quartiles=[ratios[len(ratios) // 4], ratios[len(ratios) // 2], ratios[3 * len(ratios) // 4]],
           reference="nanoGPT model.py + configure_optimizers, stand-in batches" if args.nanogpt else "stand-in",
           compile=args.compile, iters=args.iters, load_avg_1min=os.getloadavg()[0])


def cmd_dtype(args, data):
    """fp32 vs bf16 autocast training steps (forward, backward, clipping, fused AdamW) of a v1 model on this CPU,
    the two dtypes taking turns step by step; by width (--widths), at --layers / --block / --batch (default
    nanoGPT's Tiny Shakespeare model: 6 layers, block 256, batch 64, heads of 64 channels). Decides dtype auto."""
    from foundry.config import ModelConfig, TrainingConfig
    from foundry.model import GPT
    from foundry.optim import build_optimizer
    from foundry.cpugemm import onednn_linear_rule, use_onednn_linears
    from foundry.hostcpu import host_cpu
    from foundry.train import autocast_ctx, pick_dtype, tune_cpu_malloc

    torch.set_num_threads(args.threads or 2)
    tune_cpu_malloc()
    tc = TrainingConfig()
    rows = []
    for width in args.widths:
        mc = ModelConfig(n_layer=args.layers, n_head=args.heads or max(1, width // 64), n_embd=width, block_size=args.block,
                         vocab_size=65, bias=False, dropout=0.0)
        torch.manual_seed(0)
        model = GPT(mc)
        if onednn_linear_rule(host_cpu())[0]:  # fp32 as a training run has it (bf16 autocast is unaffected)
            use_onednn_linears(model)
        opt = build_optimizer(model, tc, "cpu")
        x, y = (torch.randint(0, 65, (args.batch, args.block)) for _ in range(2))
        times = {"float32": [], "bfloat16": []}

        def step(dtype):
            t = time.perf_counter()
            with autocast_ctx(torch.device("cpu"), getattr(torch, dtype)):
                loss, _ = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return (time.perf_counter() - t) * 1000

        for name in times:  # warm-up: oneDNN's kernels for each shape and dtype
            step(name)
        for _ in range(args.iters):
            for name in times:
                times[name].append(step(name))
        f32, bf16 = (statistics.median(v) for v in times.values())
        auto = pick_dtype("auto", torch.device("cpu"), mc)
        rows.append({"n_embd": width, "n_head": mc.n_head, "n_layer": mc.n_layer, "block": args.block,
                     "batch": args.batch, "fp32_step_ms": f32, "bf16_step_ms": bf16, "bf16_speedup": f32 / bf16,
                     "fp32_min_ms": min(times["float32"]), "bf16_min_ms": min(times["bfloat16"]),
                     "bf16_speedup_min": min(times["float32"]) / min(times["bfloat16"]),
                     "per_step_ratios": [a / b for a, b in zip(times["float32"], times["bfloat16"])],
                     "auto_picks": str(auto).replace("torch.", "")})
        print(json.dumps(rows[-1]), flush=True)
    record("dtype", rows=rows, iters=args.iters, amx=torch.cpu._is_amx_tile_supported(),
           fp32_gemm="onednn" if onednn_linear_rule(host_cpu())[0] else "mkl",
           cpu_capability=torch.backends.cpu.get_cpu_capability(), load_avg_1min=os.getloadavg()[0])


def cmd_gemm(args, data):
    """fp32 GEMM throughput of MKL (torch's default) and oneDNN (foundry.cpugemm) at the shapes of nanoGPT's
    README CPU run (768 tokens x 128 wide, 4x MLP, the qkv projection), forward and both gradients, the two
    libraries alternating call by call; GFLOP/s of the median call."""
    from foundry.cpugemm import _gemm

    torch.set_num_threads(args.threads or 2)
    rows = []
    for m, k, n in [(768, 128, 384), (768, 128, 512), (768, 512, 128), (768, 128, 128)]:
        x, w, dy = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        cases = {"forward": (lambda: x @ w.t(), lambda: _gemm(x, w, None)),
                 "grad_input": (lambda: dy @ w, lambda: _gemm(dy, w.t(), None)),
                 "grad_weight": (lambda: dy.t() @ x, lambda: _gemm(dy.t(), x.t(), None))}
        for name, (mkl, dnn) in cases.items():
            times = {"mkl": [], "onednn": []}
            for _ in range(20):
                mkl(), dnn()
            for _ in range(args.iters * 10):
                for lib, f in (("mkl", mkl), ("onednn", dnn)):
                    t = time.perf_counter()
                    f()
                    times[lib].append(time.perf_counter() - t)
            gf = {lib: 2 * m * k * n / statistics.median(v) / 1e9 for lib, v in times.items()}
            rows.append({"m": m, "k": k, "n": n, "gemm": name, "mkl_gflops": gf["mkl"], "onednn_gflops": gf["onednn"],
                         "onednn_speedup": gf["onednn"] / gf["mkl"]})
            print(json.dumps(rows[-1]), flush=True)
    record("gemm", rows=rows, cpu_capability=torch.backends.cpu.get_cpu_capability(),
           load_avg_1min=os.getloadavg()[0])


def cmd_dtypeloss(args, data):
    """Loss equality of bf16 autocast and fp32: the same experiment per seed in both dtypes (paired seeds), each
    its own process; final validation loss on the declared windows, paired differences against the seed spread.
    The model and length come from --set-like overrides in --dtype-run (default: 4 x 384, block 64, batch 12,
    200 iterations: a width where dtype auto picks bf16 on AMX, short enough for a shared 2-core machine)."""
    seeds = args.seeds or [1, 2, 3]
    rows = []
    for seed in seeds:
        row = {"seed": seed}

        def run(dtype):
            return dtype, foundry_proc(data, f"dtypeloss_{dtype}", args.iters or 200, seed,
                                       [*args.dtype_run, f"training.dtype={dtype}"], whole=True)

        dtypes = ("float32", "bfloat16")
        if args.parallel:  # only the loss matters here: both dtypes at once (give each 1 thread)
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(run, dtypes))
        else:
            results = [run(d) for d in dtypes]
        for dtype, r in results:
            row[dtype] = r["summary"]["val_loss"]
            row[dtype + "_ms_per_iter"] = r["ms_per_iter"]
        row["bf16_minus_fp32"] = row["bfloat16"] - row["float32"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    diffs = [r["bf16_minus_fp32"] for r in rows]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    record("dtypeloss", runs=rows, overrides=args.dtype_run, iters=args.iters or 200, parallel=args.parallel,
           fp32_mean=statistics.mean(r["float32"] for r in rows), fp32_seed_sd=sd([r["float32"] for r in rows]),
           bf16_mean=statistics.mean(r["bfloat16"] for r in rows), bf16_seed_sd=sd([r["bfloat16"] for r in rows]),
           paired_diff_mean=statistics.mean(diffs), paired_diff_sd=sd(diffs),
           load_avg_1min=os.getloadavg()[0])


def best_of_interleaved(fns: dict, trials: int, calls: int = 5) -> dict:
    """Each function's fastest mean over `calls` consecutive calls, taking turns for `trials` rounds: on 2
    cores shared with other jobs the minimum is the figure least disturbed by them, and taking turns
    exposes every variant to the same load."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()  # warm-up: allocator, kernel selection
    for _ in range(trials):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / calls * 1000)
    return best


def cmd_attn(args, data):
    """Forward+backward of causal attention as the model runs it (q, k, v are head views of the fused qkv
    projection's output; the result is transposed back to (B, T, C)): foundry's explicit short-sequence path
    (modules.attention._explicit_causal) vs SDPA's kernel, by sequence length and head size."""
    import torch.nn.functional as F

    from foundry.modules.attention import EXPLICIT_CAUSAL_MAX_T, _explicit_causal, explicit_causal_pays

    torch.set_num_threads(args.threads or 2)
    rows = []
    for T in (32, 64, 128, 256):
        for hs in (32, 64):
            B, nh = max(1, 12 * 64 // T), 4  # the config's 768 tokens per micro-batch, 4 heads
            C = nh * hs
            qkv = torch.randn(B, T, 3 * C, requires_grad=True)
            g = torch.randn(B, T, C)

            def layer(attn):
                def run():
                    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(C, dim=-1))  # (B, nh, T, hs)
                    attn(q, k, v).transpose(1, 2).reshape(B, T, C).backward(g)
                    qkv.grad = None
                return run

            best = best_of_interleaved({"explicit": layer(_explicit_causal), "sdpa": layer(
                lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))}, args.iters)
            rows.append({"T": T, "head_size": hs, "batch": B, "explicit_ms": best["explicit"], "sdpa_ms": best["sdpa"],
                         "explicit_speedup": best["sdpa"] / best["explicit"],
                         "taken_in_training": T <= EXPLICIT_CAUSAL_MAX_T and explicit_causal_pays()})
            print(json.dumps(rows[-1]), flush=True)
    record("attn", rows=rows, iters=args.iters, cpu_capability=torch.backends.cpu.get_cpu_capability())


MALLOC_PROBE = """
import json, resource, sys, time, torch
from foundry.config import load_experiment
from foundry.data.dataset import load_data
from foundry.data.sampler import make_sampler
from foundry.model import GPT
from foundry.optim import build_optimizer
from foundry.train import tune_cpu_malloc
cfg = load_experiment(sys.argv[1], ["data.path=" + sys.argv[2], "model_args.vocab_size=65"])
torch.set_num_threads(int(sys.argv[4]))
applied = tune_cpu_malloc() if sys.argv[3] == "1" else False
model = GPT(cfg.model_args); opt = build_optimizer(model, cfg.training, "cpu")
sampler = make_sampler(load_data(sys.argv[2]), cfg)
def step():
    x, y = sampler.next_batch(); model(x, y)[0].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(10): step()
n = int(sys.argv[5]); r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
for _ in range(n): step()
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"applied": applied, "ms_per_step": (t1 - t0) / n * 1000, "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / n,
                  "sys_ms_per_step": (r1.ru_stime - r0.ru_stime) / n * 1000}))
"""


def cmd_malloc(args, data):
    """Training steps with glibc's default malloc vs train.tune_cpu_malloc, alternating fresh processes (mallopt
    cannot be undone in-process): wall ms, minor page faults and system CPU time per step."""
    threads = args.threads or 2
    res = {"default": [], "tuned": []}
    for r in range(args.rounds):
        for name, flag in (("default", "0"), ("tuned", "1")):
            out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, str(EXPERIMENT), str(data), flag, str(threads),
                                  str(args.iters)], check=True, cwd=REPO, capture_output=True, text=True).stdout
            res[name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]['ms_per_step']:.1f} ms, {v[-1]['minor_faults_per_step']:.0f} "
                                             f"faults, {v[-1]['sys_ms_per_step']:.1f} sys ms" for n, v in res.items()),
              flush=True)
    agg = {f"{n}_{k}": statistics.median(row[k] for row in v) for n, v in res.items()
           for k in ("ms_per_step", "minor_faults_per_step", "sys_ms_per_step")}
    record("malloc", **agg, speedup=agg["default_ms_per_step"] / agg["tuned_ms_per_step"],
           applied=res["tuned"][0]["applied"], rounds=args.rounds, iters=args.iters)


OMP_POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin10k": {"GOMP_SPINCOUNT": "10000"},
                "spin1k": {"GOMP_SPINCOUNT": "1000"}}


def cmd_omp(args, data):
    """Training steps under libgomp's wait policies (its default spinning, PASSIVE, bounded spin counts),
    alternating fresh processes (libgomp reads them when it loads): what train.tune_omp_wait decides between."""
    threads = args.threads or 2
    res = {name: [] for name in OMP_POLICIES}
    for r in range(args.rounds):
        for name, env in OMP_POLICIES.items():
            clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, str(EXPERIMENT), str(data), "1", str(threads),
                                  str(args.iters)], check=True, cwd=REPO, capture_output=True, text=True,
                                 env={**clean, **env}).stdout
            res[name].append(json.loads(out.strip().splitlines()[-1])["ms_per_step"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f} ms/step" for n, v in res.items()) +
              f" (load {os.getloadavg()[0]:.1f})", flush=True)
    record("omp", ms_per_step={n: v for n, v in res.items()}, threads=threads, rounds=args.rounds, iters=args.iters,
           load_avg_1min=os.getloadavg()[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["speed", "e2e", "dtypeloss", "gemm", "full", "v1v2", "steps", "dtype", "attn", "malloc", "omp", "reference",
                                    "evalrun"])
    p.add_argument("runs", nargs="*", type=Path, help="evalrun: run directories")
    p.add_argument("--data", type=Path, help="prepared character-level Tiny Shakespeare directory")
    p.add_argument("--rounds", type=int, default=6, help="speed/malloc: alternating rounds (fresh processes each)")
    p.add_argument("--compile", action="store_true", help="steps/speed: foundry's side with torch.compile")
    p.add_argument("--threads", type=int, default=None, help="override training.num_threads for both sides")
    p.add_argument("--iters", type=int, default=None,
                   help="iterations per round/run (speed: 150; steps/dtype/attn/malloc: 40; full runs 2000)")
    p.add_argument("--widths", type=int, nargs="*", default=[128, 384], help="dtype: model widths (heads of 64)")
    p.add_argument("--layers", type=int, default=6, help="dtype: layers")
    p.add_argument("--heads", type=int, default=None, help="dtype: heads (default: width / 64)")
    p.add_argument("--block", type=int, default=256, help="dtype: block size")
    p.add_argument("--batch", type=int, default=64, help="dtype: batch size")
    p.add_argument("--dtype-run", nargs="*", default=["model_args.n_embd=384", "model_args.n_head=6",
                   "training.warmup_iters=20", "training.eval_interval=100", "training.sample_tokens=0"],
                   help="dtypeloss: KEY=VALUE overrides of the experiment for both dtypes")
    p.add_argument("--parallel", action="store_true", help="dtypeloss: each seed's fp32 and bf16 runs at once")
    p.add_argument("--seeds", type=int, nargs="*", help="full: one pair of runs per seed (default: 1337)")
    p.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], help="speed/e2e/full: OMP_WAIT_POLICY for both "
                   "sides (default: nanoGPT libgomp's default, foundry its own choice; train.tune_omp_wait)")
    p.add_argument("--nanogpt", type=Path, help="speed/full: a nanoGPT checkout; its own train.py is the reference "
                   "(run with the README's CPU flags) instead of bench/nanogpt_ref.py")
    args = p.parse_args(argv)
    data = prepare(args.data)
    if args.threads:
        THREADS.append(f"training.num_threads={args.threads}")
    if args.omp_wait:
        CHILD_ENV["OMP_WAIT_POLICY"] = args.omp_wait
    if args.compile and args.what == "speed":
        THREADS.append("training.compile=true")
    if args.what in ("speed", "steps", "dtype", "attn", "malloc", "omp", "gemm") and args.iters is None:
        args.iters = 150 if args.what == "speed" else 40
    if args.what == "e2e" and args.iters is None:
        args.iters = 2000
    {"speed": cmd_speed, "e2e": cmd_e2e, "dtypeloss": cmd_dtypeloss, "gemm": cmd_gemm, "full": cmd_full, "v1v2": cmd_v1v2, "steps": cmd_steps, "dtype": cmd_dtype, "attn": cmd_attn,
     "malloc": cmd_malloc, "omp": cmd_omp, "reference": cmd_reference, "evalrun": cmd_evalrun}[args.what](args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
