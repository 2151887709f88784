"""Train a GPT from an experiment file.

    python -m foundry.train EXPERIMENT.yaml [--set key.path=value ...] [--resume] [--logger tensorboard|wandb]
    torchrun --standalone --nproc_per_node=2 -m foundry.train EXPERIMENT.yaml      (DDP/FSDP, see distributed.py)

One plain loop with section banners over the training core (foundry/trainer/: build_run, train_step,
TrainState, RunDir; the objective decides what a batch and its loss are). What it leaves in `out_dir`
(rank 0 alone writes, through trainer/rundir.py):
    config.yaml      the fully resolved experiment (loads back to an equal config)
    tokenizer.json   the data's tokenizer, so the run directory is self-contained
    metrics.jsonl    one JSON object per line: training lines {iter, loss, lr, tokens_per_sec, ms_per_iter,
                     grad_norm, mfu}, evaluation lines {iter, val_loss, val_bpb, val_tokens}
    ckpt_last/       weights (safetensors) + optimiser, RNG and data-position state, written atomically
    ckpt_best/       the checkpoint with the lowest validation loss
    sample.txt       text generated at the end
    summary.json     final numbers

Exact resume: a checkpoint is taken at every evaluation; re-running into the same out_dir (or --resume)
restores weights, optimiser, RNG and the sampler's row counter, drops metric lines after the checkpoint and
continues, so on CPU the rest of the run is bit-identical to an uninterrupted one. max_iters may grow
between runs (extending a run); any other change of the experiment is refused.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

# No `import torch` up here: torch takes seconds to import, and a bad experiment must be refused in well under
# one (tests/test_config.py::test_cli_refuses_bad_config_fast_and_names_the_key). Functions import it.
from foundry.config import ConfigError, ExperimentConfig, load_experiment
from foundry.interrupt import EXIT_CODE as INTERRUPTED_EXIT, Interrupted, StopOnSignal
from foundry.safeio import DamagedFileError, DiskFullError
from foundry.trainer.rundir import RESUMABLE_CHANGES, MetricsLog, RunDir, read_metrics  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------------------------------
# Run log: metrics.jsonl always (trainer/rundir.py), TensorBoard / Weights & Biases (offline) on request
# --------------------------------------------------------------------------------------------------
LOGGERS = ("tensorboard", "wandb")


class ExtraLoggers:
    """Optional mirrors of the metrics: TensorBoard event files in out_dir/tb, W&B offline runs in out_dir/wandb.
    Imported lazily; a missing package fails before training starts, naming the extra to install."""

    def __init__(self, names, out: Path, cfg: ExperimentConfig, enabled: bool):
        self.tb = self.wb = None
        unknown = [n for n in names if n not in LOGGERS]
        if unknown:
            raise ConfigError(f"--logger {unknown[0]!r}: unknown logger; choose from {', '.join(LOGGERS)} "
                              f"(metrics.jsonl is always written)")
        for name in names:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                else:
                    import wandb
            except ImportError as e:
                raise ConfigError(f"--logger {name}: the {name} package is not installed ({e}); install it with "
                                  f"`pip install -e '.[{name}]'` or drop --logger {name}") from None
            if not enabled:
                continue
            if name == "tensorboard":
                self.tb = SummaryWriter(log_dir=str(out / "tb"))
            else:
                os.environ.setdefault("WANDB_MODE", "offline")  # never reach the network unless the user says so
                self.wb = wandb.init(project="foundry", name=out.name, dir=str(out), config=cfg.to_dict(),
                                     mode=os.environ["WANDB_MODE"], resume="allow")

    def write(self, step: int, row: dict) -> None:
        scalars = {k: v for k, v in row.items() if k != "iter" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# --------------------------------------------------------------------------------------------------
# Device, precision, throughput
# --------------------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("training.device: 'mps' asked for, but MPS is not available here; use 'cpu' or 'auto'")
    if name == "cuda":  # under torchrun each process takes its own GPU
        return torch.device("cuda", local_rank)
    return torch.device(name)


def pick_dtype(name: str, device: torch.device, mc=None) -> torch.dtype:
    """The training dtype for `training.dtype` (see dtype_choice for `auto`)."""
    return dtype_choice(name, device, mc)[0]


# `dtype: auto` on an AMX CPU: bf16 autocast from this width, or from this block size (attention's T x T
# work). bench/bench_train.py dtype, Sapphire Rapids VM, 2 threads, training steps, bf16 over fp32
# (BENCHMARKS.md): at block 64, batch 12, 4 layers: width 128 0.93x, 256 1.54x, 384 3.27x (batch 64, width
# 128: 0.95x); at nanoGPT's block 256, batch 64, 6 layers: width 128 1.47x, 256 2.22x, 384 3.04x.
AMX_BF16_MIN_WIDTH = 256
AMX_BF16_MIN_BLOCK = 256
# ... and on an AVX-512 BF16 CPU without AMX, the same thresholds. AMD EPYC (cpu family 26), 2 threads, same
# benchmark, fp32 GEMMs on oneDNN as training runs them (foundry.cpugemm; 2026-12-02): block 64, batch 12,
# 4 layers: width 128 0.97x (4 heads) / 1.13x (2 heads), 256 1.22x, 384 1.32x; block 256, batch 64, 6 layers:
# width 128 1.65x, 256 1.76x, 384 1.83x. (Against MKL's fp32, before foundry.cpugemm: 1.24-3.03x.)
BF16_MIN_WIDTH = AMX_BF16_MIN_WIDTH
BF16_MIN_BLOCK = AMX_BF16_MIN_BLOCK


def dtype_choice(name: str, device: torch.device, mc=None, cpu=None) -> tuple[torch.dtype, str]:
    """(dtype, why). `auto`: bf16 autocast on CUDA cards that support it; on CPUs with AMX tiles (Intel
    Sapphire Rapids and later, where oneDNN runs bf16 GEMMs on the matrix units) when the model (`mc`, a
    ModelConfig) is at least AMX_BF16_MIN_WIDTH wide or AMX_BF16_MIN_BLOCK long, and on AVX-512 BF16 CPUs
    without AMX (bf16 dot products on the vector units: AMD Zen 4 and later, Intel Cooper Lake) at the same
    sizes (BF16_MIN_WIDTH, BF16_MIN_BLOCK) - each where it was measured to pay; fp32 otherwise: narrow short models lose to
    the casts on AMX, and without a hardware bf16 path bf16 is emulated (on an AVX2 CPU bf16 autocast measured
    2.4x slower than fp32, 2026-11-26). `cpu`: a foundry.hostcpu.HostCPU (default: this machine)."""
    import torch

    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name], \
            f"training.dtype={name}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: bf16 autocast (this CUDA device supports bf16)"
        return torch.float32, "auto: fp32 (this CUDA device has no bf16)"
    if device.type != "cpu":
        return torch.float32, f"auto: fp32 ({device.type}: bf16 unmeasured)"
    if cpu is None:
        from foundry.hostcpu import host_cpu

        cpu = host_cpu()
    size = "" if mc is None else f", {mc.n_embd} wide, block {mc.block_size}"
    if cpu.amx:
        if mc is None or mc.n_embd >= AMX_BF16_MIN_WIDTH or mc.block_size >= AMX_BF16_MIN_BLOCK:
            return torch.bfloat16, f"auto: bf16 autocast (CPU with AMX tiles{size}: measured 1.5-3.3x fp32 at this size)"
        return torch.float32, (f"auto: fp32 (CPU with AMX tiles, but {mc.n_embd} wide and block {mc.block_size}: "
                               f"bf16 measured 0.93-0.95x fp32 below width {AMX_BF16_MIN_WIDTH} and block "
                               f"{AMX_BF16_MIN_BLOCK})")
    if cpu.avx512_bf16:
        if mc is None or mc.n_embd >= BF16_MIN_WIDTH or mc.block_size >= BF16_MIN_BLOCK:
            return torch.bfloat16, (f"auto: bf16 autocast (AVX-512 BF16 CPU without AMX{size}: measured 1.2-1.8x "
                                    f"fp32 from width {BF16_MIN_WIDTH} or block {BF16_MIN_BLOCK})")
        return torch.float32, (f"auto: fp32 (AVX-512 BF16 CPU without AMX, but {mc.n_embd} wide and block "
                               f"{mc.block_size}: bf16 measured 0.97-1.13x fp32 below width {BF16_MIN_WIDTH} and "
                               f"block {BF16_MIN_BLOCK})")
    return torch.float32, (f"auto: fp32 ({cpu.capability} CPU without AVX-512 BF16 or AMX: bf16 would be emulated, "
                           f"measured 2.4x slower on AVX2)")


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
              "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The card's peak for MFU; FOUNDRY_PEAK_FLOPS overrides (e.g. for a CPU), None when unknown."""
    import torch

    if os.environ.get("FOUNDRY_PEAK_FLOPS"):
        return float(os.environ["FOUNDRY_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is not None and dtype == torch.float32:
        peak /= 2  # fp32 matmuls run as TF32: half the bf16 dense rate on Ampere and Hopper
    return peak


# glibc mallopt parameters (malloc.h) and the values foundry sets on CPU runs.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20   # glibc's ceiling for the threshold on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1 << 30


def tune_cpu_malloc() -> bool:
    """Stop glibc from handing activation buffers back to the kernel between steps; True if applied.

    Every training step frees and re-allocates the same activation and gradient buffers (hundreds of KB to
    a few MB each on small models). glibc serves allocations above its mmap threshold (128 KiB, adapted
    upwards only slowly) with fresh mmap'd pages and trims the heap top eagerly, so each step page-faults
    and zero-fills those buffers again: measured at 1,680-2,835 minor faults and 8-14 ms of system CPU time
    per step on experiments/shakespeare_char_cpu.yaml (bench/bench_train.py malloc). Raising the mmap
    threshold to its 32 MiB ceiling and the trim threshold to 1 GiB lets the heap keep and reuse those pages
    (0-7 faults per step, 1.11x per step); the price is that the process keeps its peak heap, which training reaches anyway.
    This is what the jemalloc/tcmalloc advice of PyTorch's CPU performance guide buys, without LD_PRELOAD.
    A no-op (False) off glibc (macOS, musl) or where libc cannot be loaded."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False


def cpu_busy_elsewhere(seconds: float = 0.1) -> float | None:
    """Cores' worth of CPU that other processes used over the next `seconds` (/proc/stat, before this process
    does any work), or None where that cannot be read (not Linux)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return ticks[3] + ticks[4], sum(ticks)

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def tune_omp_wait(threads: int | None, busy: float | None = None) -> str | None:
    """On a CPU that other processes keep busy, let OpenMP's idle threads sleep instead of spinning; returns
    why, or None when nothing was changed. Must run before torch is imported (libgomp reads it as it loads).

    torch's CPU kernels end every parallel region at a barrier, and libgomp's idle threads spin there for up
    to 300,000 iterations before sleeping. When other processes hold the cores, the thread a barrier waits
    for is descheduled while its partner burns its own time slice spinning: on the 2-core development VM at
    load average 10-17, a 2-thread training step of experiments/shakespeare_char_cpu.yaml took 2.2-3.5 s
    with the default policy and 0.15-0.29 s with OMP_WAIT_POLICY=PASSIVE (BENCHMARKS.md). Taken when the
    CPU that others use (`busy`, cores' worth, measured over 0.1 s by default) plus the run's threads exceeds
    the cores by half a core, so an idle machine keeps the default's wake-up latency; a user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins. The policy changes no result, only how threads wait."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return None
    cores = os.cpu_count() or 1
    threads = threads or cores
    if threads < 2:
        return None
    busy = cpu_busy_elsewhere() if busy is None else busy
    if busy is None or busy + threads <= cores + 0.5:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (f"OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE): other processes use {busy:.1f} of "
            f"{cores} cores and this run wants {threads} threads; set OMP_WAIT_POLICY yourself to choose")


def fmt_eta(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def __getattr__(name: str):
    """`foundry.train.evaluate` (the LM validation) is re-exported lazily: importing this module stays torch-free."""
    if name == "evaluate":
        from foundry.trainer.objectives import evaluate_windows

        return evaluate_windows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False, loggers: tuple[str, ...] = ()) -> dict:
    """Train as `cfg` says; returns the summary (also written to out_dir/summary.json):
    val_loss, val_bpb, best_val_loss, iters, params, wall_seconds, tokens_per_sec, config_hash, out_dir.

    Re-running into an out_dir that holds a checkpoint of the same experiment continues it (max_iters may
    be larger: the run is extended). Under torchrun every process calls this; rank 0 alone writes."""
    import torch

    from foundry import distributed as D
    from foundry.data.sampler import split_batch
    from foundry.optim import lr_at
    from foundry.trainer.core import TrainState, build_run, train_step

    t_start = time.perf_counter()
    tc = cfg.training

    # ---- processes, device, precision -----------------------------------------------------------
    device_type = pick_device(tc.device).type
    info = D.init(device_type)
    stop = StopOnSignal().install()  # SIGTERM: checkpoint after the step in flight, then exit (see the loop)
    try:
        device = pick_device(tc.device, info.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        main = info.is_main
        say = (lambda *a, **k: None) if (quiet or not main) else (lambda *a, **k: print(*a, **k, flush=True))
        out = RunDir(cfg.out_dir, main)
        extra_log = ExtraLoggers(loggers, out.path, cfg, enabled=False)  # fail on a missing package before any work
        dtype, dtype_why = dtype_choice(tc.dtype, device, cfg.model_args)
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if device.type == "cpu" and tc.cpu_malloc_tuning:
            tune_cpu_malloc()
        ctx = autocast_ctx(device, dtype)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (no effect under bf16)
            torch.backends.cudnn.allow_tf32 = True

        # ---- data, model, optimiser, sampler; the state of an earlier run in out_dir ---------------
        run = build_run(cfg, device, info, out, say=say)
        if resume and run.ckpt is None:
            say(f"--resume: no checkpoint in {out.path}, starting a new run")
        cfg, model, data, objective = run.cfg, run.model, run.data, run.objective
        mc = cfg.model_args
        state = TrainState.start(run, say=say)
        if run.ckpt is not None:
            out.resume(cfg, state.iter, data.tokenizer)
            say(f"resumed from {run.ckpt} at iteration {state.iter}")
        else:
            out.start(cfg, data.tokenizer)
        D.barrier(info)
        micro_batch, accum = split_batch(tc, info.world_size)
        tokens_per_iter = micro_batch * accum * info.world_size * objective.tokens_per_row()  # global
        n_params = run.n_params
        flops_per_iter = model.flops_per_token(mc.block_size) * tokens_per_iter
        peak = peak_flops(device, dtype)

        log = out.metrics()
        extra_log = ExtraLoggers(loggers, out.path, cfg, enabled=main)
        say(f"foundry: {cfg.base_model} | {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide | "
            f"{mc.attention}/{mc.position}/{mc.norm}/{mc.mlp} | {n_params / 1e6:.2f}M parameters | "
            f"data {objective.describe(data)} | "
            f"{device.type} {str(dtype).replace('torch.', '')}, {torch.get_num_threads()} threads | "
            f"{info.world_size} process{'es' if info.world_size > 1 else ''} ({run.mode}) | "
            f"batch {micro_batch}x{accum}x{info.world_size}x{mc.block_size} = {tokens_per_iter:,} tokens/iter")
        say(f"dtype: {dtype_why}")
        if device.type == "cpu" and dtype == torch.float32:
            from foundry.hostcpu import host_cpu
            from foundry.modules.attention import EXPLICIT_CAUSAL_MAX_T, explicit_causal_rule

            from foundry.cpugemm import onednn_linear_rule

            explicit, why = explicit_causal_rule(host_cpu())
            say(f"attention: {'explicit baddbmm' if explicit else 'SDPA flash'} causal path for training at "
                f"T <= {EXPLICIT_CAUSAL_MAX_T} ({why})")
            if not tc.compile:
                dnn, why = onednn_linear_rule(host_cpu())
                say(f"linear layers: {'oneDNN' if dnn else 'MKL'} fp32 GEMMs ({why})")
        if cfg.lora.rank > 0:
            from foundry.lora import describe_trainable

            say(f"lora: rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g} on {', '.join(cfg.lora.targets)} of "
                f"{cfg.init_from} | {describe_trainable(model)}")
        if state.iter == 0:
            log.write(event="start", params=n_params, data=data.name, data_fingerprint=data.fingerprint,
                      config_hash=cfg.hash(), device=device.type, dtype=str(dtype).replace("torch.", ""),
                      world_size=info.world_size, distributed=run.mode,
                      **({"data_split": data.split} if hasattr(data, "split") else {}))

        def checkpoint(is_best: bool) -> None:
            """Collective under FSDP (the full state is gathered); rank 0 writes."""
            st, weights = state.capture(run)
            log.sync()
            out.save_checkpoint(model, st, cfg.to_yaml(), weights=weights, is_best=is_best)
            D.barrier(info)

        def check_finite(it: int, bad_at: torch.Tensor) -> None:
            """Stop on the first non-finite loss or gradient norm, before it can reach a checkpoint."""
            first_bad = int(D.all_reduce_max(bad_at, info))
            if first_bad >= 0:
                raise FloatingPointError(
                    f"loss or gradient norm became non-finite (nan/inf) at iteration {first_bad + 1} (seen at "
                    f"{it}); stopped without saving, so the last good checkpoint in {out.last} is intact. "
                    f"Lower training.learning_rate, set training.grad_clip, or use training.dtype=float32")

        def stop_requested(synced: bool) -> bool:
            """A SIGTERM arrived. Under torchrun the ranks agree on it at log and evaluation steps, where
            they synchronise anyway, so one all-reduce per step is not paid."""
            if info.world_size == 1:
                return stop.requested is not None
            flag = torch.tensor(int(stop.requested is not None), device=device)
            return synced and bool(D.all_reduce_max(flag, info))

        # ---- the loop ---------------------------------------------------------------------------
        model.train()
        ev: dict = {}
        bad_at = torch.full((), -1, dtype=torch.long, device=device)   # first iteration with a non-finite value
        loss_window = torch.zeros((), device=device)                   # summed loss since the last log line
        parts_window: dict = {}                                        # summed extra scalars (MoE balancing, DPO)
        window_iters, t_last, train_time, train_iters = 0, time.perf_counter(), 0.0, 0
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")      # inf: measure the norm, do not clip
        loss_of = run.loss_of(ctx)
        for it in range(state.iter, tc.max_iters):
            lr = lr_at(it, tc)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            step = train_step(model, run.optimizer, run.sampler.next_batch, loss_of, accum, clip, run.no_sync)
            bad_at = torch.where((bad_at < 0) & ~step.finite, torch.full_like(bad_at, it), bad_at)
            loss_window += step.loss
            for k, v in step.parts.items():
                parts_window[k] = parts_window[k] + v if k in parts_window else v.clone()
            window_iters += 1

            done = it + 1
            is_eval = done % tc.eval_interval == 0 or done == tc.max_iters
            if done % tc.log_interval == 0 or is_eval:
                check_finite(done, bad_at)
                loss_val = float(D.all_reduce_mean(loss_window, info)) / window_iters
                now = time.perf_counter()
                dt = (now - t_last) / window_iters
                train_time += now - t_last
                train_iters += window_iters
                tps = tokens_per_iter / dt
                row = dict(iter=done, loss=loss_val, lr=lr, tokens_per_sec=tps, ms_per_iter=dt * 1000,
                           grad_norm=float(step.grad_norm))
                for k, v in parts_window.items():  # aux_loss is reported apart from `loss`, which includes it
                    row[k] = float(D.all_reduce_mean(v, info)) / window_iters
                parts_window.clear()
                mfu_txt = f"{flops_per_iter / dt / 1e9:,.1f} GFLOP/s"
                if peak:
                    row["mfu"] = flops_per_iter / dt / peak
                    mfu_txt = f"MFU {100 * row['mfu']:.1f}%"
                log.write(**row)
                extra_log.write(done, row)
                eta = (train_time / train_iters) * (tc.max_iters - done)
                say(f"iter {done:>6}/{tc.max_iters} | loss {loss_val:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms/it | "
                    f"{tps:,.0f} tok/s | {mfu_txt} | ETA {fmt_eta(eta)}")
                loss_window.zero_()
                window_iters = 0
                t_last = time.perf_counter()
            if is_eval:
                ev = objective.evaluate(model, data, device, ctx, info)
                is_best = ev["val_loss"] < state.best_val
                state.iter, state.best_val = done, min(state.best_val, ev["val_loss"])
                log.write(iter=done, **ev)
                extra_log.write(done, ev)
                say(f"eval {done}: " + " | ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in ev.items()
                                                   if isinstance(v, float)))
                checkpoint(is_best)
                t_last = time.perf_counter()  # evaluation and checkpoint time are not training throughput
            if stop_requested(done % tc.log_interval == 0 or is_eval):
                check_finite(done, bad_at)
                if not is_eval:  # an evaluation step has just saved
                    state.iter = done
                    checkpoint(is_best=False)
                log.close()
                extra_log.close()
                raise Interrupted(f"stopped by {stop.requested or 'SIGTERM'} at iteration {done}, checkpoint saved "
                                  f"in {out.last}; run the same command again to continue from there")

        # ---- the end: a sample and a summary ------------------------------------------------------
        if not ev:  # resumed a finished run
            ev = objective.evaluate(model, data, device, ctx, info)
        if tc.sample_tokens > 0:
            sampler_model = model
            if run.mode == "fsdp":  # sample from a plain copy of the full weights, on rank 0 alone
                weights = D.full_model_state(model, run.mode)
                sampler_model = None
                if main:
                    from foundry.model import GPT

                    sampler_model = GPT(mc).to(device)
                    sampler_model.load_state_dict(weights, strict=False)
            if main:
                prompt = data.tokenizer.encode(tc.sample_prompt) if tc.sample_prompt else [0]
                gen = torch.Generator(device=device).manual_seed(tc.seed)
                ids = sampler_model.generate([prompt], tc.sample_tokens, temperature=0.8, top_k=200, generator=gen)[0]
                sample = tc.sample_prompt + data.tokenizer.decode(ids)
                out.write_sample(sample)
                say("---- sample ----\n" + sample.strip() + "\n----------------")
        summary = {**{k: v for k, v in ev.items() if k.startswith("val_") and k != "val_tokens"},
                   "best_val_loss": state.best_val,
                   "iters": tc.max_iters, "params": n_params, "wall_seconds": time.perf_counter() - t_start,
                   "tokens_per_sec": tokens_per_iter * train_iters / train_time if train_time > 0 else None,
                   "world_size": info.world_size, "distributed": run.mode,
                   "config_hash": cfg.hash(), "out_dir": str(out.path)}
        out.write_summary(summary)
        extra_log.close()
        log.close()
        say(f"done: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in ev.items() if isinstance(v, float))
            + f" -> {out.path}")
        D.barrier(info)
        return summary
    finally:
        stop.restore()
        D.shutdown(info)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m foundry.train", description="Train a GPT from an experiment YAML. Under "
        "`torchrun --standalone --nproc_per_node=N -m foundry.train ...` it trains data-parallel "
        "(training.distributed: auto|ddp|fsdp|none; gloo on CPU, nccl on GPU).")
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/baseline.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. --set training.max_iters=100")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir (re-running into the same out_dir does this too)")
    p.add_argument("--logger", dest="loggers", action="append", default=[], choices=LOGGERS,
                   help="also log to TensorBoard (out_dir/tb) or Weights & Biases offline (out_dir/wandb); "
                        "needs the matching extra: pip install -e '.[tensorboard]' / '.[wandb]'")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--no-store", action="store_true",
                   help="do not record this run in the experiment store ($FOUNDRY_STORE, default runs/foundry.sqlite)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved experiment, only what its variants and settings read, with its hash; "
                        "train nothing")
    args = p.parse_args(argv)
    try:
        cfg = load_experiment(args.experiment, args.overrides)
        if args.print_config:
            print(f"# config hash {cfg.hash()}\n" + cfg.to_yaml(used_only=True), end="")
            return 0
        why = tune_omp_wait(cfg.training.num_threads) if cfg.training.device in ("cpu", "auto") else None
        if why and not args.quiet and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: {why}", flush=True)
        run = lambda: train(cfg, resume=args.resume, quiet=args.quiet, loggers=tuple(args.loggers))  # noqa: E731
        if args.no_store or int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 records
            run()
        else:
            from foundry.store import recorded_run
            with recorded_run(cfg) as rec:
                rec.metrics = run()
    except DamagedFileError as e:
        again = " ".join(shlex.quote(a) for a in ["python", "-m", "foundry.train", *(argv or sys.argv[1:])])
        print(f"error: {e}" + (f": {again}" if e.restart_hint else ""), file=sys.stderr)
        return 2
    except (ConfigError, FileExistsError, FileNotFoundError, FloatingPointError, DiskFullError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank stopped at the same step
            print(f"{e}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
