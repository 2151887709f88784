"""The sweep loop: plan paired trials, run them (resumably), rank, decide, report, promote.

    state = run_sweep(SweepOptions(type="attention", variants=["mha", "gqa_2kv"], seeds=3, jobs=2, out="runs/sweep"))

Plan: the baseline and each mutant, each on the same K seeds (cfg.training.seed + i) and therefore the same
data order, all under one budget (tokens by default: the base config's max_iters x tokens per iteration). Each
trial is one run directory OUT/trials/<label>/s<seed> and one row in the experiment store.
Resume: OUT/sweep.json holds what the sweep is (its identity) and the iterations it resolved; a trial whose
store row is `done` at its target iterations is never re-run; an interrupted one continues from its last
checkpoint. Successive halving (--halving): every candidate trains to budget / eta^(R-1), the mutants are
ranked by their paired gap to the baseline at that point, the best 1/eta go on, the rest are `pruned`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from foundry.config import ExperimentConfig, load_experiment, write_text_atomic


def read_metrics(path: Path) -> list[dict]:
    """Rows of a run's metrics.jsonl, skipping a torn line (torch-free twin of foundry.train.read_metrics, so
    the sweep process itself never imports torch)."""
    rows = []
    try:
        text = Path(path).read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class SweepError(ValueError):
    """A sweep that cannot start; the message says why and what to do."""


@dataclass
class SweepOptions:
    type: str
    variants: list[str]
    base: str | None = None
    experiments: str = "experiments"
    tasks: list[str] = field(default_factory=list)
    eval_limit: int | None = None
    eval_data: str | None = None
    promote: bool = False
    jobs: int = 1
    seeds: int = 3
    budget: str | None = None
    overrides: list[str] = field(default_factory=list)
    out: str = "runs/sweep"
    store: str | None = None
    halving: bool = False
    eta: int = 3
    rungs: int = 2
    alpha: float = 0.05
    min_effect: float = 0.0
    executor: str = "local"
    cluster: str | None = None
    threads: int | None = None
    progress: float = 30.0
    retry_failed: bool = False
    quiet: bool = False

    def identity(self) -> dict:
        """What makes two invocations the same sweep (resume needs the same identity)."""
        keys = ("type", "variants", "tasks", "eval_limit", "seeds", "budget", "overrides", "halving", "eta",
                "rungs")
        return {k: getattr(self, k) for k in keys}


@dataclass
class Candidate:
    label: str
    cfg: ExperimentConfig | None
    mutation: str | None
    error: str | None = None      # refused / unknown variant / no-op: not trained
    status: str = "planned"       # planned | refused | noop


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------
def plan_candidates(base: ExperimentConfig, base_path: str, opts: SweepOptions) -> list[Candidate]:
    from foundry.mutate import MutationError, NoOpMutation, UnknownMutation, apply_mutation, get_type

    get_type(opts.type)  # unknown type: fail before anything runs
    cands = [Candidate("baseline", base, None)]
    seen = {base.hash(): "baseline"}
    for v in opts.variants:
        mutation = f"{opts.type} {v}"
        try:
            cfg = apply_mutation(base, opts.type, v, parent=base_path)
        except NoOpMutation as e:
            cands.append(Candidate(_label(opts.type, v), None, mutation, str(e), "noop"))
            continue
        except UnknownMutation as e:
            raise SweepError(str(e)) from None  # a typo: refuse the whole sweep before training anything
        except MutationError as e:  # refused with the reason: reported, not trained
            cands.append(Candidate(_label(opts.type, v), None, mutation, str(e), "refused"))
            continue
        label = Path(cfg.out_dir).name
        if cfg.hash() in seen:
            cands.append(Candidate(label, None, mutation, f"no-op: the same experiment as {seen[cfg.hash()]}",
                                   "noop"))
            continue
        seen[cfg.hash()] = label
        cands.append(Candidate(label, cfg, mutation))
    return cands


def _label(type_name: str, variant: str) -> str:
    from foundry.mutate import get_type
    return get_type(type_name).file_stem(variant)


def tokens_per_iter(cfg: ExperimentConfig) -> int:
    t = cfg.training
    return t.batch_size * t.gradient_accumulation_steps * cfg.model_args.block_size


def parse_budget(text: str | None) -> tuple[str, float] | None:
    if text is None:
        return None
    kind, _, value = text.partition("=")
    if kind not in ("tokens", "flops", "seconds") or not value:
        raise SweepError(f"--budget {text!r}: expected tokens=N, flops=N or seconds=N (e.g. --budget tokens=2e6)")
    try:
        v = float(value)
    except ValueError:
        raise SweepError(f"--budget {text!r}: {value!r} is not a number") from None
    if v <= 0:
        raise SweepError(f"--budget {text!r}: must be > 0")
    return kind, v


def resolve_iters(cands: list[Candidate], base: ExperimentConfig, budget: tuple[str, float] | None,
                  threads: int) -> tuple[dict[str, int], str]:
    """Iterations per candidate so every candidate gets the same budget, and the budget in words."""
    live = [c for c in cands if c.cfg is not None]
    if budget is None:
        tokens = base.training.max_iters * tokens_per_iter(base)
        budget = ("tokens", float(tokens))
        text = (f"{tokens:,} tokens each (the base config's {base.training.max_iters} iterations x "
                f"{tokens_per_iter(base)} tokens)")
    else:
        text = f"{budget[0]}={budget[1]:g} each"
    kind, value = budget
    iters = {}
    for c in live:
        tpi = tokens_per_iter(c.cfg)
        if kind == "tokens":
            n = value / tpi
        elif kind == "flops":
            n = value / (_flops_per_token(c.cfg) * tpi)
        else:
            from foundry.sweep.worker import probe_seconds_per_iter
            n = value / probe_seconds_per_iter(c.cfg.to_yaml(), threads)
        iters[c.label] = max(1, int(round(n)))
    if kind == "flops":
        text += " (iterations from each model's forward+backward FLOPs per token)"
    if kind == "seconds":
        text += " (iterations from a timed probe of each candidate, recorded so a resume uses the same)"
    return iters, text


def _flops_per_token(cfg: ExperimentConfig) -> float:
    from foundry.data.dataset import load_data
    from foundry.model import GPT
    mc = cfg.model_args
    if mc.vocab_size is None:
        mc = cfg.replace({"model_args.vocab_size": load_data(cfg.data.path).vocab_size}).model_args
    return GPT(mc).flops_per_token(mc.block_size)


def rung_iters(final: int, eta: int, rungs: int) -> list[int]:
    """Iterations at each rung of successive halving: final / eta^(R-1), ..., final / eta, final."""
    out = [max(1, int(round(final / eta ** (rungs - 1 - k)))) for k in range(rungs)]
    return sorted(set(out))


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------
class Sweep:
    def __init__(self, opts: SweepOptions):
        from foundry.store import Store, code_version
        from foundry.sweep.executors import EXECUTORS, cpu_threads_per_job

        self.opts = opts
        self.out = Path(opts.out)
        self.say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))
        if opts.jobs < 1:
            raise SweepError(f"--jobs {opts.jobs}: must be >= 1")
        if opts.seeds < 1:
            raise SweepError(f"--seeds {opts.seeds}: must be >= 1")
        if opts.executor not in EXECUTORS:
            raise SweepError(f"--executor {opts.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if opts.halving and (opts.eta < 2 or opts.rungs < 2):
            raise SweepError("--halving needs --eta >= 2 and --rungs >= 2")
        self.threads = opts.threads or cpu_threads_per_job(opts.jobs)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / ".sweep.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{self.out}: another sweep is running in this directory; wait for it or use "
                             f"another --out") from None
        self.sweep_id = f"{self.out.name}-{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:8]}"
        self.store = Store(opts.store)  # default: $FOUNDRY_STORE or runs/foundry.sqlite
        self.code = code_version()
        self._executor = None
        self.state = self._load_state()

    # ---- state: identity, base, resolved iterations ----------------------------------------------
    def _load_state(self) -> dict:
        from foundry.mutate import baseline_path
        opts = self.opts
        sp = self.out / "sweep.json"
        budget = parse_budget(opts.budget)
        if opts.tasks:
            self._check_tasks(opts.tasks)
        if sp.is_file():
            state = json.loads(sp.read_text())
            if state["identity"] != opts.identity():
                diff = {k: (state["identity"].get(k), v) for k, v in opts.identity().items()
                        if state["identity"].get(k) != v}
                what = ", ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise SweepError(f"{self.out} holds a different sweep ({what}); run it with the same arguments "
                                 f"to resume, or choose another --out")
            self.base = load_experiment(self.out / "base.yaml")
            now_path = Path(opts.base) if opts.base else baseline_path(opts.experiments)
            if not state.get("promoted") and load_experiment(now_path, opts.overrides).hash() != self.base.hash():
                # (after its own promotion the champion is this sweep's winner: resuming is still right)
                raise SweepError(f"{self.out} was started from another base ({state['base_path']} as it was then, "
                                 f"snapshot in {self.out / 'base.yaml'}); choose another --out for a sweep from "
                                 f"{now_path}")
            self.cands = plan_candidates(self.base, state["base_path"], opts)
            self.say(f"resuming sweep {self.sweep_id} in {self.out}")
            return state
        base_path = Path(opts.base) if opts.base else baseline_path(opts.experiments)
        self.base = load_experiment(base_path, opts.overrides)
        self.cands = plan_candidates(self.base, str(base_path), opts)
        iters, text = resolve_iters(self.cands, self.base, budget, self.threads)
        state = {"identity": opts.identity(), "sweep_id": self.sweep_id, "base_path": str(base_path),
                 "base_hash": self.base.hash(), "iters": iters, "budget_text": text, "promoted": None,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text_atomic(self.out / "base.yaml", f"# The base of sweep {self.sweep_id}, as resolved at its "
                                                  f"start (from {base_path}).\n" + self.base.to_yaml())
        write_text_atomic(sp, json.dumps(state, indent=2))
        return state

    def _check_tasks(self, tasks: list[str]) -> None:
        try:
            from foundry.eval.spec import task_names
        except ImportError:
            self.say("note: the eval harness (foundry.eval) is not available here; tasks cannot be scored, so "
                     "the ranking falls back to validation bits per byte")
            return
        known = task_names()
        bad = [t for t in tasks if t not in known]
        if bad:
            from foundry.mutate import closest_first
            raise SweepError(f"--eval-task {bad[0]!r}: unknown task; known, closest first: "
                             f"{', '.join(closest_first(bad[0], known))}")

    def _save_state(self) -> None:
        write_text_atomic(self.out / "sweep.json", json.dumps(self.state, indent=2))

    # ---- trials -----------------------------------------------------------------------------------
    def trial_specs(self, cand: Candidate, iters: int, final: int, with_tasks: bool) -> list[dict]:
        specs = []
        for i in range(self.opts.seeds):
            seed = cand.cfg.training.seed + i
            tid = f"{self.sweep_id}/{cand.label}/s{seed}"
            cfg = cand.cfg.replace({"training.seed": seed, "training.max_iters": iters,
                                    "training.lr_decay_iters": final,
                                    "training.eval_interval": min(cand.cfg.training.eval_interval, final),
                                    "out_dir": str(self.out / "trials" / cand.label / f"s{seed}")})
            specs.append({"id": tid, "label": cand.label, "seed_index": i, "config": cfg.to_yaml(),
                          "store": str(self.store.path), "sweep": self.sweep_id,
                          "parent": None if cand.label == "baseline" else
                          f"{self.sweep_id}/baseline/s{self.base.training.seed + i}",  # its pair
                          "mutation": cand.mutation, "threads": self.threads, "code": list(self.code),
                          "tasks": self.opts.tasks if with_tasks else [], "eval_limit": self.opts.eval_limit,
                          "eval_data": self.opts.eval_data,
                          "iters": iters, "tokens_per_iter": tokens_per_iter(cand.cfg)})
        return specs

    def _finished(self, spec: dict) -> bool:
        row = self.store.get(spec["id"])
        if row is None:
            return False
        if row["status"] == "pruned":
            return True
        if row["status"] == "failed":
            return not self.opts.retry_failed
        if row["status"] == "done" and row["metrics"].get("iters", 0) >= spec["iters"]:
            return not (spec["tasks"] and "tasks" not in row["metrics"])
        return False

    def run_specs(self, specs: list[dict]) -> None:
        """Run every spec not already finished, printing the live table; returns when all have ended."""
        from foundry.sweep.executors import make_executor
        todo = [s for s in specs if not self._finished(s)]
        skipped = len(specs) - len(todo)
        if skipped:
            self.say(f"{skipped} trial(s) already recorded as finished: not re-run")
        if not todo:
            return
        for k, s in enumerate(todo):  # a halving rung continues a finished run: its wall time carries over
            s["gpu"] = k % self.opts.jobs  # used only where CUDA is: trials spread over the GPUs round-robin
            row = self.store.get(s["id"])
            s["wall_before"] = (row["wall_seconds"] or 0.0) if row and row["status"] == "done" else 0.0
        if self._executor is None:  # one pool for the whole sweep: workers import torch once
            self._executor = make_executor(self.opts.executor, self.opts.jobs, self.threads, self.out,
                                           self.opts.cluster)
        ex = self._executor
        handles = {s["id"]: ex.submit(s) for s in todo}
        live = {s["id"]: s for s in todo}
        last_print, last_done = 0.0, -1
        tty = sys.stdout.isatty() and not self.opts.quiet
        drawn = 0
        try:
            while True:
                finished = {tid: h for tid, h in handles.items() if h.done()}
                for tid, h in finished.items():
                    try:
                        res = h.result()
                    except Exception as e:  # noqa: BLE001 - a dead worker (segfault, OOM kill) fails its trial
                        err = f"{type(e).__name__}: {e} (the worker process died)"
                        if self.store.get(tid) is None:
                            self.store.start(tid, live[tid]["config"], "", sweep=self.sweep_id,
                                             label=live[tid]["label"], mutation=live[tid]["mutation"])
                        self.store.fail(tid, err)
                        res = {"status": "failed", "error": err}
                    if res["status"] == "failed":
                        self.say(f"trial {tid} failed: {res['error']} (recorded; the sweep goes on)")
                    del handles[tid]
                now = time.time()
                n_done = len(live) - len(handles)
                if tty and now - last_print >= 1.0:
                    table = self.progress_table(specs)
                    sys.stdout.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + table + "\n")
                    sys.stdout.flush()
                    drawn, last_print = table.count("\n") + 1, now
                elif not tty and (n_done != last_done or now - last_print >= self.opts.progress):
                    self.say(self.progress_table(specs))
                    last_print, last_done = now, n_done
                if not handles:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            ex.shutdown(wait=False)
            self._executor = None
            raise

    def progress_table(self, specs: list[dict]) -> str:
        rows = [f"{'trial':<28} {'status':<8} {'iter':>11} {'loss':>7} {'val_bpb':>8}"]
        for s in specs:
            rec = self.store.get(s["id"])
            status = rec["status"] if rec else "queued"
            out = Path(rec["artifacts"]["out_dir"]) if rec and rec["artifacts"].get("out_dir") else None
            it, loss, bpb = 0, None, None
            if out and (out / "metrics.jsonl").is_file():
                for r in read_metrics(out / "metrics.jsonl"):
                    if "loss" in r:
                        it, loss = r["iter"], r["loss"]
                    if "val_bpb" in r:
                        bpb = r["val_bpb"]
            name = f"{s['label']}/s{s['seed_index']}"
            progress = f"{it}/{s['iters']}"
            rows.append(f"{name[:28]:<28} {status:<8} {progress:>11} "
                        f"{'-' if loss is None else f'{loss:.3f}':>7} {'-' if bpb is None else f'{bpb:.4f}':>8}")
        return "\n".join(rows)

    # ---- the whole sweep --------------------------------------------------------------------------
    def run(self) -> dict:
        from foundry.sweep.report import decide, rank, write_report

        o = self.opts
        for c in self.cands:
            if c.cfg is None:
                self.say(f"{c.label}: {c.error} (not trained)")
        live = [c for c in self.cands if c.cfg is not None]
        iters = self.state["iters"]
        self.say(f"sweep {self.sweep_id}: {len(live)} candidates x {o.seeds} seeds, {o.jobs} job(s) x "
                 f"{self.threads} thread(s), executor {o.executor}; budget {self.state['budget_text']}")
        alive = [c for c in live]
        if o.halving:
            alive = self._halving(live, iters)
        specs = [s for c in alive for s in self.trial_specs(c, iters[c.label], iters[c.label], True)]
        self.run_specs(specs)

        results, curves = self.collect(live)
        order, how = rank(results, o.tasks)
        decision = decide(results, order, how, alpha=o.alpha, min_effect=o.min_effect)
        compute = self._compute(live, iters)
        self.state["compute_text"] = compute["text"]
        promoted_path = None
        if o.promote and decision["promote"]:
            promoted_path = self._promote(decision, results)
        elif o.promote:
            decision["text"] += " (--promote: the baseline stays)"
        elif decision["promote"]:
            decision["text"] += " (not promoted: run with --promote to make it the champion)"
        paths = write_report(self.out, self.state, results, order, how, decision, curves, promoted_path)
        summary = {"sweep": self.sweep_id, "ranking": order, "how": how, "decision": decision,
                   "promoted": promoted_path, "compute": compute,
                   "results": {k: {kk: vv for kk, vv in r.items()} for k, r in results.items()},
                   "report": [str(p) for p in paths]}
        write_text_atomic(self.out / "results.json", json.dumps(summary, indent=2, default=str))
        self._save_state()
        for n in how["notes"]:
            self.say(n)
        for i, k in enumerate(order, 1):
            self.say(f"  {i}. {k:<28} val bpb {results[k]['mean_bpb']:.4f}"
                     + (f"  capability {results[k]['capability']:.4f}" if how["tasks"] else ""))
        self.say(f"decision: {decision['text']}")
        self.say(f"rule: {decision['rule']}")
        self.say(f"report: {self.out / 'report.md'}")
        return summary

    def _halving(self, live: list[Candidate], iters: dict) -> list[Candidate]:
        """Successive halving against the paired baseline curve; returns the candidates that run to the end."""
        o = self.opts
        base = live[0]
        mutants = live[1:]
        ladder = {c.label: rung_iters(iters[c.label], o.eta, o.rungs) for c in live}
        n_rungs = min(len(v) for v in ladder.values())
        for k in range(n_rungs - 1):
            group = [base] + mutants
            specs = [s for c in group for s in self.trial_specs(c, ladder[c.label][k], iters[c.label], False)]
            shown = ", ".join(f"{c.label}@{ladder[c.label][k]}" for c in group[:3]) + (" ..." if len(group) > 3 else "")
            self.say(f"successive halving, rung {k + 1}/{n_rungs}: {len(mutants)} mutant(s) to {shown}")
            self.run_specs(specs)
            base_bpb = self._bpb_at(base, ladder[base.label][k])
            scored = []
            for m in mutants:
                bpb = self._bpb_at(m, ladder[m.label][k])
                if base_bpb is None or bpb is None:
                    continue  # a failed trial: recorded as failed, out of the race
                scored.append((sum(b - a for a, b in zip(base_bpb, bpb)) / len(bpb), m))
            scored.sort(key=lambda x: x[0])
            keep = max(1, math.ceil(len(scored) / o.eta)) if scored else 0
            survivors = [m for _, m in scored[:keep]]
            for gap, m in scored[keep:]:
                for s in self.trial_specs(m, ladder[m.label][k], iters[m.label], False):
                    row = self.store.get(s["id"])
                    if row and row["status"] == "done":
                        self.store.prune(s["id"])
                self.say(f"  pruned {m.label}: {gap:+.4f} bpb vs the paired baseline at iteration "
                         f"{ladder[m.label][k]}")
            mutants = survivors
        return [base] + mutants

    def _bpb_at(self, cand: Candidate, it: int) -> list[float] | None:
        vals = []
        for s in self.trial_specs(cand, it, it, False):
            row = self.store.get(s["id"])
            if row is None or row["status"] == "failed":
                return None
            v = row["metrics"].get("evals", {}).get(str(it))
            if v is None:
                return None
            vals.append(v)
        return vals

    def collect(self, live: list[Candidate]) -> tuple[dict, dict]:
        """Per-candidate results (per-seed metrics in seed order) and curves for the plots."""
        results, curves = {}, {}
        for c in self.cands:
            if c.cfg is None:
                results[c.label] = {"status": c.status, "mutation": c.mutation, "error": c.error}
                continue
            rows = [self.store.get(s["id"]) for s in self.trial_specs(c, 1, 1, False)]
            statuses = {r["status"] if r else "missing" for r in rows}
            status = "done" if statuses == {"done"} else ("failed" if "failed" in statuses else
                                                          "pruned" if "pruned" in statuses else "incomplete")
            res = {"status": status, "mutation": c.mutation, "config_hash": c.cfg.hash(),
                   "seeds": [r["seed"] if r else None for r in rows],
                   "val_bpb": [r["metrics"].get("val_bpb") if r else None for r in rows],
                   "val_loss": [r["metrics"].get("val_loss") if r else None for r in rows],
                   "iters": [r["metrics"].get("iters") if r else None for r in rows],
                   "wall_seconds": [r["wall_seconds"] if r else None for r in rows],
                   "run_ids": [r["id"] if r else None for r in rows]}
            errs = [r["error"] for r in rows if r and r.get("error")]
            if errs:
                res["error"] = errs[0]
            elif status == "pruned":
                bpb = [b for b in res["val_bpb"] if b is not None]
                res["error"] = (f"pruned at iteration {max(i for i in res['iters'] if i)} by successive halving "
                                f"(val bpb {sum(bpb) / len(bpb):.4f} there)") if bpb else "pruned"
            if status == "done" and self.opts.tasks:
                res["tasks"] = {}
                for t in self.opts.tasks:
                    per = [r["metrics"].get("tasks", {}).get(t, {}) for r in rows]
                    if any("score" not in p for p in per):
                        res["tasks"][t] = {"error": next((p.get("error") for p in per if p.get("error")),
                                                         "no score")}
                    else:
                        res["tasks"][t] = {"scores": [p["score"] for p in per], "chance": per[0].get("chance", 0.0),
                                           "n": per[0].get("n", 0), "metric": per[0].get("metric")}
            results[c.label] = res
            curves[c.label] = []
            for r in rows:
                if not r:
                    continue
                m = read_metrics(Path(r["artifacts"].get("out_dir", "")) / "metrics.jsonl")
                tr = {x["iter"]: x["loss"] for x in m if "loss" in x and "iter" in x}
                ev = {x["iter"]: x["val_bpb"] for x in m if "val_bpb" in x}
                curves[c.label].append({"train": sorted(tr.items()), "val": sorted(ev.items())})
        return results, curves

    def _compute(self, live: list[Candidate], iters: dict) -> dict:
        """Training tokens spent, against training every candidate to the full budget (failed trials are
        left out of both: they stop at their failure whatever the schedule)."""
        spent = full = 0
        for c in live:
            tpi = tokens_per_iter(c.cfg)
            for s in self.trial_specs(c, 1, 1, False):
                row = self.store.get(s["id"])
                if row is None or row["status"] == "failed":
                    continue
                full += iters[c.label] * tpi
                spent += (row["metrics"].get("iters") or 0) * tpi
        frac = spent / full if full else float("nan")
        return {"tokens": spent, "full_tokens": full, "fraction": frac,
                "text": f"{spent:,} training tokens, {frac:.0%} of the {full:,} that training every "
                        f"candidate to the full budget takes"}

    def _promote(self, decision: dict, results: dict) -> str:
        from foundry.mutate import promote
        if self.state.get("promoted"):
            return self.state["promoted"]  # a resumed sweep does not promote twice
        win = next(c for c in self.cands if c.label == decision["winner"])
        record = {"sweep": self.sweep_id, "rule": decision["rule"], "text": decision["text"],
                  "test": decision["test"], "report": str(self.out / "report.md")}
        path = promote(win.cfg, self.opts.experiments, record)
        self.store.record_promotion(self.sweep_id, decision["winner"], win.mutation or "", str(path), record)
        self.state["promoted"] = str(path)
        self._save_state()
        self.say(f"promoted {decision['winner']} -> {path}")
        return str(path)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self.store.close()
        self._lock.close()


def run_sweep(opts: SweepOptions) -> dict:
    sweep = Sweep(opts)
    try:
        return sweep.run()
    finally:
        sweep.close()

