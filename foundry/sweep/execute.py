"""Execution: run trial specs through one executor for the whole sweep, poll them, print progress, resume.

    runner = TrialRunner(store, opts, threads, out, say)
    runner.run(specs)        # every spec not already finished in the store; returns when all have ended
    runner.close()

Resume is the store: a trial whose row is `done` at its target iterations (and scored on its tasks when it
needs them) is never run again; `pruned` and (without --retry-failed) `failed` rows count as finished; a
trial interrupted mid-way continues from its checkpoint. Specs are frozen; what a worker needs beyond them
(its GPU, the wall time already spent) goes in a fresh dict per submission, so nothing is shared or mutated
across processes. The workers write their own rows; this process only reads them (and records a worker that
died without writing).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from foundry.sweep.plan import TrialSpec, read_metrics


class TrialRunner:
    def __init__(self, store, opts, threads: int, out: Path, say):
        self.store, self.opts, self.threads, self.out, self.say = store, opts, threads, out, say
        self._executor = None

    def finished(self, spec: TrialSpec) -> bool:
        row = self.store.get(spec.id)
        if row is None:
            return False
        if row["status"] == "pruned":
            return True
        if row["status"] == "failed":
            return not self.opts.retry_failed
        if row["status"] == "done" and row["metrics"].get("iters", 0) >= spec.iters:
            return not (spec.tasks and "tasks" not in row["metrics"])
        return False

    def run(self, specs: list[TrialSpec]) -> None:
        """Run every spec not already finished, printing the live table; returns when all have ended."""
        todo = [s for s in specs if not self.finished(s)]
        if len(specs) > len(todo):
            self.say(f"{len(specs) - len(todo)} trial(s) already recorded as finished: not re-run")
        if not todo:
            return
        ex = self._pool()
        handles = {s.id: ex.submit(self._submission(s, k)) for k, s in enumerate(todo)}
        live = {s.id: s for s in todo}
        try:
            self._poll(handles, live, specs)
        except KeyboardInterrupt:
            ex.shutdown(wait=False)
            self._executor = None
            raise

    def prestart(self) -> None:
        """Start the executor's workers ahead of the first trial, where it can (the local pool)."""
        ex = self._pool()
        if hasattr(ex, "prestart"):
            ex.prestart()

    def _pool(self):
        from foundry.sweep.executors import make_executor
        if self._executor is None:  # one pool for the whole sweep: workers import torch once
            self._executor = make_executor(self.opts.executor, self.opts.jobs, self.threads, self.out,
                                           self.opts.cluster)
        return self._executor

    def _submission(self, spec: TrialSpec, k: int) -> dict:
        """The dict a worker gets: the spec, its GPU (round-robin, used only where CUDA is) and the wall time a
        halving rung's earlier part already spent (a continued run carries it over)."""
        row = self.store.get(spec.id)
        before = (row["wall_seconds"] or 0.0) if row and row["status"] == "done" else 0.0
        return dataclasses.replace(spec, gpu=k % self.opts.jobs, wall_before=before).to_dict()

    def _poll(self, handles: dict, live: dict, specs: list[TrialSpec]) -> None:
        last_print, last_done, drawn = 0.0, -1, 0
        tty = sys.stdout.isatty() and not self.opts.quiet
        while True:
            for tid in [t for t, h in handles.items() if h.done()]:
                self._reap(tid, handles.pop(tid), live[tid])
            now, n_done = time.time(), len(live) - len(handles)
            if tty and now - last_print >= 1.0:
                table = progress_table(self.store, specs)
                sys.stdout.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + table + "\n")
                sys.stdout.flush()
                drawn, last_print = table.count("\n") + 1, now
            elif not tty and (n_done != last_done or now - last_print >= self.opts.progress):
                self.say(progress_table(self.store, specs))
                last_print, last_done = now, n_done
            if not handles:
                return
            _wait_any(list(handles.values()), 0.5)

    def _reap(self, tid: str, handle, spec: TrialSpec) -> None:
        try:
            res = handle.result()
        except Exception as e:  # noqa: BLE001 - a dead worker (segfault, OOM kill) fails its trial
            err = f"{type(e).__name__}: {e} (the worker process died)"
            if self.store.get(tid) is None:
                self.store.start(tid, spec.config, "", sweep=spec.sweep, label=spec.label, mutation=spec.mutation)
            self.store.fail(tid, err)
            res = {"status": "failed", "error": err}
        if res["status"] == "failed":
            self.say(f"trial {tid} failed: {res['error']} (recorded; the sweep goes on)")

    def close(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None


def _wait_any(handles: list, timeout: float) -> None:
    """Until one handle is done or `timeout` s pass: the local pool's futures wake the loop the moment a
    trial ends (a halving rung or a confirmation look starts its next trials at once); other executors'
    handles are polled."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    if handles and all(isinstance(h, Future) for h in handles):
        wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
    else:
        time.sleep(timeout)


def progress_table(store, specs: list[TrialSpec]) -> str:
    rows = [f"{'trial':<28} {'status':<8} {'iter':>11} {'loss':>7} {'val_bpb':>8}"]
    for s in specs:
        rec = store.get(s.id)
        status = rec["status"] if rec else "queued"
        out = Path(rec["artifacts"]["out_dir"]) if rec and rec["artifacts"].get("out_dir") else None
        it, loss, bpb = 0, None, None
        if out and (out / "metrics.jsonl").is_file():
            for r in read_metrics(out / "metrics.jsonl"):
                if "loss" in r:
                    it, loss = r["iter"], r["loss"]
                if "val_bpb" in r:
                    bpb = r["val_bpb"]
        name = f"{s.label}/s{s.seed_index}"
        rows.append(f"{name[:28]:<28} {status:<8} {f'{it}/{s.iters}':>11} "
                    f"{'-' if loss is None else f'{loss:.3f}':>7} {'-' if bpb is None else f'{bpb:.4f}':>8}")
    return "\n".join(rows)
