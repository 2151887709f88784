"""Where trials run: a local process pool (default), a Ray cluster, or Slurm/local through submitit.

Every executor has `submit(spec) -> handle` (handle: `done()`, `result()`) and `shutdown()`; the sweep loop
polls handles, so it can print progress and stays the same whatever runs the trials.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from foundry.sweep.worker import init_worker, run_trial

EXECUTORS = ("local", "ray", "submitit")


def cpu_threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """CPU threads each of `jobs` concurrent trials gets: the cores split evenly, at least one each."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, jobs))


class LocalExecutor:
    """A pool of `jobs` spawned worker processes (spawn: a clean interpreter, no forked torch state).
    A worker that dies (segfault, out of memory) breaks the pool: the trial is reported failed and the pool
    is rebuilt, so the sweep goes on."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self._pool = self._new_pool()
        self._futures: list = []

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"),
                                   initializer=init_worker)

    def prestart(self) -> None:
        """Start the workers now (one no-op task each), so their start and imports overlap the sweep's own
        planning instead of following it."""
        for _ in range(self.jobs):
            self._futures.append(self._pool.submit(os.getpid))

    def submit(self, spec: dict):
        try:
            f = self._pool.submit(run_trial, spec)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            f = self._pool.submit(run_trial, spec)
        self._futures = [x for x in self._futures if not x.done()] + [f]
        return f

    def shutdown(self, wait: bool = True) -> None:
        # Ctrl-C: do not leave workers training after the sweep has gone. At the end of a sweep (every trial
        # returned: each worker is idle, its store closed) a worker is ended the same way rather than asked to
        # exit: its interpreter's orderly exit took ~0.4 s of the sweep's wall time.
        if not wait or all(f.done() for f in self._futures):
            for p in list((getattr(self._pool, "_processes", None) or {}).values()):
                if p.is_alive():
                    p.kill()
        self._pool.shutdown(wait=wait, cancel_futures=True)


class SubmititExecutor:
    """submitit: Slurm on a cluster (`cluster='slurm'`), or its local executor (`cluster='local'`, what the
    tests use). Job logs go to OUT/submitit/."""

    def __init__(self, jobs: int, folder: Path, cluster: str | None, threads: int, timeout_min: int):
        try:
            import submitit
        except ImportError:
            raise RuntimeError("--executor submitit needs submitit: pip install 'foundry[submitit]'") from None
        self._ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = {"timeout_min": timeout_min, "cpus_per_task": threads}
        if self._ex.cluster == "slurm":
            params["slurm_array_parallelism"] = jobs
        self._ex.update_parameters(**params)

    def submit(self, spec: dict):
        return self._ex.submit(run_trial, spec)

    def shutdown(self, wait: bool = True) -> None:
        pass


class _RayHandle:
    def __init__(self, ray, ref):
        self._ray, self._ref = ray, ref

    def done(self) -> bool:
        ready, _ = self._ray.wait([self._ref], timeout=0)
        return bool(ready)

    def result(self):
        return self._ray.get(self._ref)


class RayExecutor:
    """Ray: joins the cluster at $RAY_ADDRESS, or starts a local instance; each trial asks for its threads
    as num_cpus, so Ray packs trials onto the cluster's cores."""

    def __init__(self, jobs: int, threads: int):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs ray: pip install 'foundry[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            addr = os.environ.get("RAY_ADDRESS")
            ray.init(address=addr) if addr else ray.init(num_cpus=jobs * threads, include_dashboard=False,
                                                         log_to_driver=False)
        self._remote = ray.remote(num_cpus=threads)(run_trial)

    def submit(self, spec: dict):
        return _RayHandle(self._ray, self._remote.remote(spec))

    def shutdown(self, wait: bool = True) -> None:
        if not os.environ.get("RAY_ADDRESS"):
            self._ray.shutdown()


def make_executor(name: str, jobs: int, threads: int, out: Path, cluster: str | None = None,
                  timeout_min: int = 600):
    if name == "local":
        return LocalExecutor(jobs)
    if name == "submitit":
        return SubmititExecutor(jobs, out / "submitit", cluster, threads, timeout_min)
    if name == "ray":
        return RayExecutor(jobs, threads)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
