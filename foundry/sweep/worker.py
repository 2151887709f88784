"""One trial, run in a worker process: train (or continue) a run, evaluate it, record it in the store.

`run_trial(spec)` takes and returns plain dicts so any executor (process pool, Ray, submitit) can ship it.
The worker records its own start, end and failure in the store (safe with concurrent jobs), so a killed
sweep loses nothing a worker finished. A failure is recorded with its error and returned, never raised.
"""
from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when the sweep process dies (even by SIGKILL), so no
    orphan keeps writing into a trial directory that the resumed sweep is about to use."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def init_worker() -> None:
    _die_with_parent()
    # Ctrl-C goes to the whole process group: the sweep process handles it; workers just die with it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # import torch and the model code once per worker, before the first trial's clock starts
    import foundry.checkpoint, foundry.data.dataset, foundry.model, foundry.optim, foundry.train  # noqa: F401,E401
    from foundry.data.dataset import keep_loaded

    keep_loaded()  # trial after trial on the same data: loaded once per worker


def eval_curve(metrics_path: Path) -> dict[int, float]:
    """{iteration: val_bpb} from a run's metrics.jsonl (the last line for an iteration wins: a resumed run
    re-logs iterations after its last checkpoint)."""
    from foundry.sweep.plan import read_metrics
    return {int(r["iter"]): float(r["val_bpb"]) for r in read_metrics(metrics_path) if "val_bpb" in r}


def run_trial(spec: dict) -> dict:
    """Train `spec['config']` (YAML of the resolved trial config) to its max_iters, evaluate, record."""
    import yaml

    from foundry.config import from_dict
    from foundry.store import Store

    t0 = time.perf_counter()
    store = Store(spec["store"])
    cfg = from_dict(yaml.safe_load(spec["config"]))
    out = Path(cfg.out_dir)
    artifacts = {"out_dir": str(out), "metrics": str(out / "metrics.jsonl"), "config": str(out / "config.yaml"),
                 "checkpoint": str(out / "ckpt_best")}
    store.start(spec["id"], spec["config"], cfg.hash(), seed=cfg.training.seed, parent=spec.get("parent"),
                mutation=spec.get("mutation"), sweep=spec.get("sweep"), label=spec.get("label"),
                artifacts=artifacts, code=tuple(spec["code"]) if spec.get("code") else None)
    try:
        import torch

        from foundry.train import train
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        if spec.get("gpu") is not None and cfg.training.device in ("auto", "cuda") and torch.cuda.is_available():
            # trials share the GPUs round-robin: "cuda" in this worker now means this trial's GPU
            torch.cuda.set_device(int(spec["gpu"]) % torch.cuda.device_count())
        summary = train(cfg, quiet=True)
        metrics = {"val_loss": summary["val_loss"], "val_bpb": summary.get("val_bpb"),  # none under dpo
                   "best_val_loss": summary["best_val_loss"], "iters": cfg.training.max_iters,
                   "params": summary.get("params"),
                   "tokens": cfg.training.max_iters * cfg.training.batch_size * cfg.model_args.block_size
                   * cfg.training.gradient_accumulation_steps,
                   "evals": {str(k): v for k, v in eval_curve(out / "metrics.jsonl").items()}}
        if spec.get("tasks"):
            metrics["tasks"] = _evaluate(out, spec)
        wall = time.perf_counter() - t0
        store.finish(spec["id"], metrics, wall_seconds=wall + float(spec.get("wall_before", 0.0)),
                     artifacts=artifacts)
        return {"id": spec["id"], "status": "done", "metrics": metrics, "wall_seconds": wall}
    except BaseException as e:  # noqa: BLE001 - the sweep goes on; the error is recorded and reported
        if isinstance(e, KeyboardInterrupt):
            raise
        err = f"{type(e).__name__}: {e}"
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
        store.fail(spec["id"], err + "\n" + tb, wall_seconds=time.perf_counter() - t0)
        return {"id": spec["id"], "status": "failed", "error": err}
    finally:
        store.close()


def _evaluate(out: Path, spec: dict) -> dict:
    """Task scores of the trained run; a task the harness cannot run is recorded with its error."""
    try:
        from foundry.eval import evaluate
    except ImportError as e:
        return {t: {"error": f"the eval harness is not available ({e})"} for t in spec["tasks"]}
    res = {}
    for task in spec["tasks"]:
        try:
            r = evaluate(str(out), [task], limit=spec.get("eval_limit"), data_dir=spec.get("eval_data"),
                         device=_eval_device(spec))[task]
            res[task] = {k: r[k] for k in ("metric", "score", "chance", "n", "items_path") if k in r}
        except Exception as e:  # noqa: BLE001 - one task's failure does not sink the trial
            res[task] = {"error": f"{type(e).__name__}: {e}"}
    return res


def _eval_device(spec: dict) -> str:
    import torch
    if spec.get("gpu") is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


def probe_seconds_per_iter(config_yaml: str, threads: int, iters: int = 8) -> float:
    """Time a few optimiser steps of a config (after 2 warm-up steps) to turn a seconds budget into iterations."""
    import torch
    import yaml

    from foundry.config import from_dict
    from foundry.trainer.core import build_run, train_step

    cfg = from_dict(yaml.safe_load(config_yaml))
    if threads:
        torch.set_num_threads(threads)
    run = build_run(cfg, "cpu")  # the training core's model, optimiser and batches: what a trial will run
    loss_of = run.loss_of()
    t = 0.0
    for i in range(iters + 2):
        if i == 2:
            t = time.perf_counter()
        train_step(run.model, run.optimizer, run.sampler.next_batch, loss_of, run.accum)
    return (time.perf_counter() - t) / iters

