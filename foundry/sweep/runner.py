"""The sweep, stage by stage: plan, (halving), screen, select, confirm, decide, report, promote.

    summary = run_sweep(SweepOptions(type="lr", variants=["x0.5", "x2"], seeds=3, jobs=2, out="runs/sweep"))

    plan      foundry.sweep.plan      candidates, budgets, rungs, seed layout, frozen trial specs
    execute   foundry.sweep.execute   one executor for the sweep, polling, resume from the store
    results   foundry.sweep.results   what the trials measured, the ranking metric, samples per seed
    decision  foundry.sweep.decision  the promotion rule (select on screening seeds, confirm on fresh ones)
    report    foundry.sweep.report    report.md, plots, the printed decision

Resume: OUT/sweep.json holds the sweep's identity and the iterations it resolved; every stage asks the store
what is finished and computes its next step from recorded results only, so a sweep killed anywhere (SIGKILL
included) and run again with the same arguments takes the same path without re-running a finished trial.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from pathlib import Path

from foundry.config import load_experiment, write_text_atomic
from foundry.sweep import decision as D
from foundry.sweep.plan import (Candidate, SeedLayout, SpecContext, SweepError, SweepOptions, parse_budget,
                                plan_candidates, read_metrics, resolve_iters, rung_iters, tokens_per_iter,
                                trial_spec)
from foundry.sweep.results import collect, curves, item_gains, ranking_metric, samples

__all__ = ["Sweep", "SweepError", "SweepOptions", "run_sweep", "read_metrics", "plan_candidates", "parse_budget",
           "resolve_iters", "rung_iters"]


class Sweep:
    def __init__(self, opts: SweepOptions):
        from foundry.store import Store, code_version
        from foundry.sweep.execute import TrialRunner
        from foundry.sweep.executors import cpu_threads_per_job

        opts.check()
        self.opts, self.out, self.rule = opts, Path(opts.out), opts.rule()
        self.say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))
        self.threads = opts.threads or cpu_threads_per_job(opts.jobs)
        self.seeds = SeedLayout(opts.seeds, self.rule.confirm_seeds)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / ".sweep.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{self.out}: another sweep is running in this directory; wait for it or use "
                             f"another --out") from None
        self.sweep_id = f"{self.out.name}-{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:8]}"
        self.store = Store(opts.store)  # default: $FOUNDRY_STORE or runs/foundry.sqlite
        self.trials = TrialRunner(self.store, opts, self.threads, self.out, self.say)
        if opts.executor == "local":
            self.trials.prestart()  # the workers import torch while this process plans the sweep
        try:
            self.code = code_version()
            self.state = self._load_state()
        except BaseException:  # a refused sweep: stop the workers just started, release the lock
            self.trials.close(wait=False)
            self.store.close()
            self._lock.close()
            raise

    # ---- state: identity, base, resolved iterations ----------------------------------------------
    def _load_state(self) -> dict:
        from foundry.mutate import baseline_path
        opts = self.opts
        if opts.tasks:
            _check_tasks(opts.tasks, self.say)
        base_path = Path(opts.base) if opts.base else baseline_path(opts.experiments)
        if (self.out / "sweep.json").is_file():
            return self._resume_state(base_path)
        self.base = load_experiment(base_path, opts.overrides)
        self.cands = plan_candidates(self.base, str(base_path), opts, [] if opts.search != "grid" else None)
        iters, text = resolve_iters(self.cands, self.base, parse_budget(opts.budget), self.threads)
        state = {"identity": opts.identity(), "sweep_id": self.sweep_id, "base_path": str(base_path),
                 "base_hash": self.base.hash(), "iters": iters, "budget_text": text, "promoted": None,
                 "search": [], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text_atomic(self.out / "base.yaml", f"# The base of sweep {self.sweep_id}, as resolved at its "
                                                  f"start (from {base_path}).\n" + self.base.to_yaml())
        write_text_atomic(self.out / "sweep.json", json.dumps(state, indent=2))
        return state

    def _resume_state(self, now_path: Path) -> dict:
        opts = self.opts
        state = json.loads((self.out / "sweep.json").read_text())
        if state["identity"] != opts.identity():
            what = ", ".join(f"{k}: was {state['identity'].get(k)!r}, now {v!r}" for k, v in opts.identity().items()
                             if state["identity"].get(k) != v)
            raise SweepError(f"{self.out} holds a different sweep ({what}); run it with the same arguments "
                             f"to resume, or choose another --out")
        self.base = load_experiment(self.out / "base.yaml")
        if not state.get("promoted") and load_experiment(now_path, opts.overrides).hash() != self.base.hash():
            # (after its own promotion the champion is this sweep's winner: resuming is still right)
            raise SweepError(f"{self.out} was started from another base ({state['base_path']} as it was then, "
                             f"snapshot in {self.out / 'base.yaml'}); choose another --out for a sweep from "
                             f"{now_path}")
        variants = [t["variant"] for t in state.get("search", [])] if opts.search != "grid" else None
        self.cands = plan_candidates(self.base, state["base_path"], opts, variants)
        self.say(f"resuming sweep {self.sweep_id} in {self.out}")
        return state

    def save_state(self) -> None:
        write_text_atomic(self.out / "sweep.json", json.dumps(self.state, indent=2))

    # ---- trials ----------------------------------------------------------------------------------
    def ctx(self) -> SpecContext:
        return SpecContext(self.sweep_id, self.out, str(self.store.path), self.base.training.seed, self.threads,
                           tuple(self.code), tuple(self.opts.tasks), self.opts.eval_limit, self.opts.eval_data)

    def specs(self, cand: Candidate, indices, iters: int | None = None, with_tasks: bool = True) -> list:
        final = self.state["iters"][cand.label]
        ctx = self.ctx()
        return [trial_spec(ctx, cand, i, iters or final, final, with_tasks) for i in indices]

    def run_seeds(self, plan: dict[str, list[int]]) -> None:
        """Train each named candidate on the seed indices given, to the full budget, with its tasks."""
        by = {c.label: c for c in self.cands}
        self.trials.run([s for k, idx in plan.items() for s in self.specs(by[k], idx)])

    def result(self, cand: Candidate, indices) -> dict:
        return collect(self.store, cand, self.specs(cand, indices, 1, False), self.opts.tasks)

    # ---- the whole sweep --------------------------------------------------------------------------
    def run(self) -> dict:
        from foundry.sweep.report import announce, write_report
        for c in self.cands:
            if c.cfg is None:
                self.say(f"{c.label}: {c.error} (not trained)")
        if self.opts.search != "grid":
            from foundry.sweep.search import run_search
            run_search(self)
        live = [c for c in self.cands if c.cfg is not None]
        o = self.opts
        self.say(f"sweep {self.sweep_id}: {len(live)} candidates x {o.seeds} screening seeds (+ "
                 f"{self.rule.confirm_seeds} fresh seeds to confirm a winner), {o.jobs} job(s) x {self.threads} "
                 f"thread(s), executor {o.executor}; budget {self.state['budget_text']}")
        finalists = self._halving(live) if o.halving else live
        screened = self._screen(finalists)
        dec = self._decide(live, screened)
        dec["compute"] = self._compute(live, screened, dec)
        promoted = self._promote(dec) if o.promote and dec["promote"] else None
        if o.promote and not promoted:
            dec["text"] += " (--promote: the baseline stays)"
        elif dec["promote"] and not o.promote:
            dec["text"] += " (not promoted: run with --promote to make it the champion)"
        results = dec.pop("_results")
        self.store.record_decision(self.sweep_id, dec)
        summary = {"sweep": self.sweep_id, "ranking": dec["ranking"], "how": dec["how"], "decision": dec,
                   "promoted": promoted, "compute": dec["compute"], "results": results}
        paths = write_report(self.out, self.state, summary, {c.label: curves(self.store, self.specs(
            c, range(self.seeds.screen + self.seeds.confirm), 1, False)) for c in live})
        summary["report"] = [str(p) for p in paths]
        write_text_atomic(self.out / "results.json", json.dumps(summary, indent=2, default=str))
        self.save_state()
        self._tidy_checkpoints(dec.get("winner"))
        announce(summary, self.say, self.out)
        return summary

    # ---- stage: successive halving (screening seeds only) -----------------------------------------
    def _halving(self, live: list[Candidate]) -> list[Candidate]:
        """Successive halving against the paired baseline curve; returns the candidates that run to the end."""
        o, iters = self.opts, self.state["iters"]
        base, mutants = live[0], live[1:]
        ladder = {c.label: rung_iters(iters[c.label], o.eta, o.rungs) for c in live}
        n_rungs = min(len(v) for v in ladder.values())
        idx = self.seeds.screening()
        for k in range(n_rungs - 1):
            group = [base] + mutants
            self.say(f"successive halving, rung {k + 1}/{n_rungs}: {len(mutants)} mutant(s) to "
                     + ", ".join(f"{c.label}@{ladder[c.label][k]}" for c in group[:3]) + (" ..." * (len(group) > 3)))
            self.trials.run([s for c in group for s in self.specs(c, idx, ladder[c.label][k], False)])
            base_bpb = self._bpb_at(base, ladder[base.label][k])
            scored = sorted(((sum(b - a for a, b in zip(base_bpb, bpb)) / len(bpb), m) for m in mutants
                             if base_bpb and (bpb := self._bpb_at(m, ladder[m.label][k]))), key=lambda x: x[0])
            keep = max(1, math.ceil(len(scored) / o.eta)) if scored else 0
            for gap, m in scored[keep:]:
                for s in self.specs(m, idx, ladder[m.label][k], False):
                    row = self.store.get(s.id)
                    if row and row["status"] == "done":
                        self.store.prune(s.id)
                self.say(f"  pruned {m.label}: {gap:+.4f} bpb vs the paired baseline at iteration "
                         f"{ladder[m.label][k]}")
            mutants = [m for _, m in scored[:keep]]
        return [base] + mutants

    def _bpb_at(self, cand: Candidate, it: int) -> list[float] | None:
        vals = []
        for s in self.specs(cand, self.seeds.screening(), it, False):
            row = self.store.get(s.id)
            v = row["metrics"].get("evals", {}).get(str(it)) if row and row["status"] != "failed" else None
            if v is None:
                return None
            vals.append(v)
        return vals

    # ---- stage: screening (fixed, or adaptive seeds) ----------------------------------------------
    def _screen(self, finalists: list[Candidate]) -> dict[str, int]:
        """Run the screening seeds; returns how many each finalist ran. Adaptive: every finalist starts on
        MIN_SCREEN seeds and only the mutants still open (decision.screen_open) get one more at a time."""
        S = self.seeds.screen
        adaptive = self.opts.adaptive and self.opts.search == "grid"  # a search ran its trials on every seed
        n = {c.label: (min(D.MIN_SCREEN, S) if adaptive else S) for c in finalists}
        while True:
            self.run_seeds({k: self.seeds.screening(v) for k, v in n.items()})
            if not adaptive:
                return n
            tests, margin, _, _ = self._screening_view(finalists, n)
            open_ = D.screen_open(tests, margin, S)
            if not open_:
                return n
            self.say(f"adaptive seeds: {len(open_)} mutant(s) still open ({', '.join(open_)}): one more seed")
            for k in open_:
                n[k] += 1
            n["baseline"] = max(n.values())

    def _screening_view(self, finalists: list[Candidate], n: dict[str, int]):
        """(screening tests per mutant, margin, margin df and source, results and ranking metric)."""
        res = {c.label: self.result(c, self.seeds.screening(n[c.label])) for c in finalists}
        how = ranking_metric(res, self.opts.tasks)
        vals = {k: samples(r, how) for k, r in res.items()}
        base = vals.pop("baseline")
        tests = D.screen(base, {k: v for k, v in vals.items() if v}, how["metric"] == "capability")
        margin, mdf, msrc = D.margin_for(self.rule, [base, *[v for v in vals.values() if v]])
        return tests, margin, (mdf, msrc), (res, how)

    # ---- stage: select and confirm ------------------------------------------------------------------
    def _decide(self, live: list[Candidate], screened: dict[str, int]) -> dict:
        finalists = [c for c in live if c.label in screened]
        tests, margin, (mdf, msrc), (res, how) = self._screening_view(finalists, screened)
        for c in self.cands:  # pruned, failed, refused: reported with their reason
            res.setdefault(c.label, self.result(c, self.seeds.screening()) if c.cfg else collect(
                self.store, c, [], []))
        unit = "capability score" if how["metric"] == "capability" else "validation bits per byte"
        win = D.select(tests) if res["baseline"]["status"] == "done" else None
        verdict, test = "none", None
        if win is not None and math.isfinite(margin) and tests[win]["mean"] > margin:
            verdict, test = self._confirm(next(c for c in live if c.label == win), margin, how)
        by_gain = sorted(tests, key=lambda k: -tests[k]["mean"])  # best first; the baseline where gains turn <= 0
        ranking = [k for k in by_gain if tests[k]["mean"] > 0] + ["baseline"] + [k for k in by_gain
                                                                                if not tests[k]["mean"] > 0]
        return {"rule": self.rule.text(unit), "correction": self.rule.correction(), "metric": how["metric"],
                "unit": unit, "alpha": self.rule.alpha, "margin": margin, "margin_df": mdf, "margin_source": msrc,
                "winner": win, "verdict": verdict, "promote": verdict == "promote", "test": test,
                "screening": {k: _brief(t) for k, t in tests.items()}, "screen_seeds": screened,
                "noise": D.noise_floor(*D.paired_noise(tests), self.rule, margin, mdf), "how": how,
                "ranking": ranking,
                "text": D.verdict_text(verdict, win, test, unit, margin), "_results": res}

    def _confirm(self, win: Candidate, margin: float, how: dict) -> tuple[str, dict]:
        """Train the winner and the baseline on fresh seeds look by look; the test at each look decides."""
        base = self.cands[0]
        for look, nk in enumerate(self.rule.looks()):
            idx = self.seeds.confirmation(nk)
            self.say(f"confirming {win.label} against the baseline on {nk} fresh seed(s) (look {look + 1} of "
                     f"{len(self.rule.looks())})")
            self.run_seeds({base.label: idx, win.label: idx})
            rb, rw = self.result(base, idx), self.result(win, idx)
            if rb["status"] != "done" or rw["status"] != "done":
                return "reject", {"n": 0, "error": f"a confirmation trial did not finish ({rb['status']}, "
                                                   f"{rw['status']})", "mean": math.nan, "ci": [math.nan] * 2}
            gains = item_gains(rb, rw, how, idx) if how["metric"] == "capability" else None
            if gains is None:
                gains = D.paired_gains(samples(rb, how), samples(rw, how), how["metric"] == "capability")
            verdict, test = D.confirm_step(self.rule, margin, gains, look)
            test["per_item"] = not isinstance(gains, list)
            if verdict != "more":
                return verdict, test
        raise AssertionError("confirm_step returns a final verdict at the last look")

    # ---- compute, promotion ------------------------------------------------------------------------
    def _compute(self, live: list[Candidate], screened: dict[str, int], dec: dict) -> dict:
        """Training tokens spent, against (a) `full`: every candidate on every screening seed at the full budget
        plus the confirmation if one ran, and (b) `fixed`: this sweep with fixed seeds (halving as it ran, every
        finalist on every screening seed, the full confirmation if one ran)."""
        iters, S, C = self.state["iters"], self.seeds.screen, self.seeds.confirm
        tpi = {c.label: tokens_per_iter(c.cfg) for c in live}
        ran = {c.label: [(self.store.get(s.id) or {}) for s in self.specs(c, range(S + C), 1, False)] for c in live}
        spent = sum((r.get("metrics", {}).get("iters") or 0) * tpi[k] for k, rows in ran.items() for r in rows
                    if r.get("status") != "failed")
        confirm = sum(C * iters[k] * tpi[k] for k in ("baseline", dec["winner"])) if dec["test"] else 0
        full = sum(S * iters[k] * tpi[k] for k in tpi) + confirm
        pruned = sum((r.get("metrics", {}).get("iters") or 0) * tpi[k] for k, rows in ran.items()
                     if k not in screened for r in rows[:S])
        fixed = pruned + sum(S * iters[k] * tpi[k] for k in screened) + confirm
        return {"tokens": spent, "full_tokens": full, "fraction": spent / full if full else math.nan,
                "fixed_tokens": fixed, "vs_fixed": spent / fixed if fixed else math.nan,
                "text": f"{spent:,} training tokens: {spent / full if full else math.nan:.0%} of the {full:,} that "
                        f"training every candidate on every seed takes"
                        + (f"; adaptive seeds spent {spent / fixed if fixed else math.nan:.0%} of the fixed "
                           f"design's {fixed:,}" if self.opts.adaptive else "")}

    def _promote(self, dec: dict) -> str:
        from foundry.mutate import promote
        if self.state.get("promoted"):
            return self.state["promoted"]  # a resumed sweep does not promote twice
        win = next(c for c in self.cands if c.label == dec["winner"])
        record = {"sweep": self.sweep_id, "rule": dec["rule"], "correction": dec["correction"],
                  "text": dec["text"], "margin": dec["margin"], "test": dec["test"], "report": str(self.out / "report.md")}
        path = promote(win.cfg, self.opts.experiments, record)
        self.store.record_promotion(self.sweep_id, dec["winner"], win.mutation or "", str(path), record)
        self.state["promoted"] = str(path)
        self.save_state()
        self.say(f"promoted {dec['winner']} -> {path}")
        return str(path)

    def _tidy_checkpoints(self, winner: str | None) -> None:
        """--prune-checkpoints: the decided sweep keeps the baseline's and the winner's trial checkpoints only;
        otherwise say how much they take once it is over a GB."""
        trials, kept = self.out / "trials", sorted({"baseline", winner or "baseline"})
        if self.opts.prune_checkpoints:
            freed = prune_checkpoints(trials, set(kept))
            self.say(f"--prune-checkpoints: removed the trial checkpoints of every candidate but {', '.join(kept)} "
                     f"({freed / 1e9:.2f} GB)")
        elif (size := trial_checkpoint_bytes(trials)) > 1e9:
            self.say(f"trial checkpoints under {trials} take {size / 1e9:.1f} GB; --prune-checkpoints keeps only "
                     f"the baseline's and the winner's once a sweep has decided")

    def close(self) -> None:
        self.trials.close()
        self.store.close()
        self._lock.close()


def _brief(t: dict) -> dict:
    return {k: t[k] for k in ("n", "mean", "sd", "ci", "diffs")}


def _check_tasks(tasks: list[str], say) -> None:
    try:
        from foundry.eval.spec import task_names
    except ImportError:
        say("note: the eval harness (foundry.eval) is not available here; tasks cannot be scored, so the ranking "
            "falls back to validation bits per byte")
        return
    known = task_names()
    bad = [t for t in tasks if t not in known]
    if bad:
        from foundry.mutate import closest_first
        raise SweepError(f"--eval-task {bad[0]!r}: unknown task; known, closest first: "
                         f"{', '.join(closest_first(bad[0], known))}")


def _checkpoint_dirs(trials: Path):
    """The checkpoint directories of every trial run (trials/<candidate>/s<seed>/ckpt_last, .prevN, ckpt_best)."""
    return [d for d in trials.glob("*/*/ckpt_*") if d.is_dir()] if trials.is_dir() else []


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def trial_checkpoint_bytes(trials: Path) -> int:
    return sum(_size(d) for d in _checkpoint_dirs(trials))


def prune_checkpoints(trials: Path, keep: set) -> int:
    """Remove the checkpoints of the candidates not in `keep` (labels); returns the bytes freed. Only after the
    decision: halving resumes a surviving trial from its checkpoint, a finished sweep needs only its records."""
    import shutil
    freed = 0
    for d in _checkpoint_dirs(trials):
        if d.parent.parent.name not in keep:
            freed += _size(d)
            shutil.rmtree(d, ignore_errors=True)
    return freed


def run_sweep(opts: SweepOptions) -> dict:
    sweep = Sweep(opts)
    try:
        return sweep.run()
    finally:
        sweep.close()

