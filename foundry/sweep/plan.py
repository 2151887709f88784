"""The sweep's plan, pure: options, candidates, budgets, halving rungs, the seed layout and frozen trial specs.

    opts = SweepOptions(type="lr", variants=["x0.5", "x2"], seeds=3, out="runs/sweep")
    cands = plan_candidates(base_cfg, "experiments/baseline.yaml", opts)
    iters, text = resolve_iters(cands, base_cfg, parse_budget("tokens=2e6"), threads=2)
    seeds = SeedLayout(screen=3, confirm=3)      # indices 0..2 screen, 3..5 confirm (fresh)
    spec = trial_spec(ctx, cands[1], seed_index=0, iters=iters["lr_x2"], final=iters["lr_x2"], with_tasks=True)

Seeds: trial seed = the candidate's training.seed + index, so every candidate sees the same initialisation
noise and data order at the same index (paired). Screening indices come first; confirmation indices follow and
are used by the baseline and the screening winner only, after every selection is made.
Nothing here runs a trial; only `seconds` budgets time a short probe (resolve_iters).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from foundry.config import ExperimentConfig
from foundry.safeio import read_metrics  # noqa: F401 (re-exported: the sweep's reader)


class SweepError(ValueError):
    """A sweep that cannot start; the message says why and what to do."""


SEARCHES = ("grid", "tpe", "gp")  # grid: the variants as given; the others: Optuna samplers (sweep/search.py)


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
    seeds: int = 3                       # screening seeds (the most, with --adaptive)
    confirm_seeds: int | None = None     # fresh confirmation seeds (default: --seeds)
    adaptive: bool = False
    budget: str | None = None
    overrides: list[str] = field(default_factory=list)
    out: str = "runs/sweep"
    store: str | None = None
    halving: bool = False
    eta: int = 3
    rungs: int = 2
    alpha: float = 0.05
    min_effect: float | None = None      # None: the pooled seed-to-seed SD
    search: str = "grid"                 # grid (the variants as given) | tpe | gp (Optuna over a numeric range)
    trials: int = 8                      # --search tpe/gp: how many trials
    executor: str = "local"
    cluster: str | None = None
    threads: int | None = None
    progress: float = 30.0
    retry_failed: bool = False
    quiet: bool = False
    heal: str | None = None              # --heal: candidates are surgeries of base.init_from, healed (foundry.surgery)
    prune_checkpoints: bool = False      # after the decision: trial checkpoints of all but baseline and winner go

    def identity(self) -> dict:
        """What makes two invocations the same sweep (resume needs the same identity)."""
        keys = ("type", "variants", "tasks", "eval_limit", "seeds", "confirm_seeds", "adaptive", "budget",
                "overrides", "halving", "eta", "rungs", "alpha", "min_effect", "search", "trials")
        ident = {k: getattr(self, k) for k in keys}
        if self.heal:  # only when set, so sweeps started before --heal existed still resume
            ident["heal"] = self.heal
        return ident

    def check(self) -> None:
        """Refuse bad numbers before anything is planned or trained."""
        from foundry.sweep.executors import EXECUTORS
        if self.jobs < 1:
            raise SweepError(f"--jobs {self.jobs}: must be >= 1")
        if self.seeds < 1:
            raise SweepError(f"--seeds {self.seeds}: must be >= 1 (promotion needs >= 2 to estimate seed noise)")
        if self.seeds < 2 and self.promote and self.min_effect is None:  # the margin would be NaN: never promoted
            raise SweepError("--seeds 1 --promote: one screening seed cannot estimate the margin (the seed-to-seed "
                             "SD a rerun shows); give the smallest gain worth promoting with --min-effect M, or "
                             "--seeds >= 2")
        if self.confirm_seeds is not None and self.confirm_seeds < 2:
            raise SweepError(f"--confirm-seeds {self.confirm_seeds}: must be >= 2 (a t-test on one seed has no "
                             f"noise estimate)")
        if self.executor not in EXECUTORS:
            raise SweepError(f"--executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.halving and (self.eta < 2 or self.rungs < 2):
            raise SweepError("--halving needs --eta >= 2 and --rungs >= 2")
        if not 0 < self.alpha < 0.5:
            raise SweepError(f"--alpha {self.alpha}: must be in (0, 0.5)")
        if self.min_effect is not None and self.min_effect < 0:
            raise SweepError(f"--min-effect {self.min_effect}: must be >= 0 (a gain in the ranking metric)")
        if self.search not in SEARCHES:
            raise SweepError(f"--search {self.search!r}: choose {', '.join(SEARCHES[:-1])} or {SEARCHES[-1]}")
        if self.search != "grid" and (len(self.variants) != 2 or self.trials < 2):
            raise SweepError(f"--search {self.search} takes the range as two variants, LOW HIGH (e.g. lr x0.1 "
                             "x10), and --trials >= 2")

    def rule(self):
        from foundry.sweep.decision import Rule
        mutants = self.trials if self.search != "grid" else len(self.variants)
        keep = []
        for _ in range(self.rungs - 1 if self.halving else 0):  # as the runner keeps: ceil(alive / eta)
            keep.append(max(1, math.ceil((keep[-1] if keep else mutants) / self.eta)))
        return Rule(alpha=self.alpha, min_effect=self.min_effect, screen_seeds=self.seeds,
                    confirm_seeds=self.confirm_seeds or max(2, self.seeds), adaptive=self.adaptive,
                    mutants=mutants, keep=tuple(keep))


@dataclass
class Candidate:
    label: str
    cfg: ExperimentConfig | None
    mutation: str | None
    error: str | None = None      # refused / unknown variant / no-op: not trained
    status: str = "planned"       # planned | refused | noop


@dataclass(frozen=True)
class SeedLayout:
    """Seed indices: screening 0..screen-1, confirmation screen..screen+confirm-1 (fresh, never selected on)."""
    screen: int
    confirm: int

    def screening(self, n: int | None = None) -> list[int]:
        return list(range(self.screen if n is None else min(n, self.screen)))

    def confirmation(self, n: int) -> list[int]:
        return list(range(self.screen, self.screen + min(n, self.confirm)))


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial; shipped to it as a plain dict (to_dict), never shared."""
    id: str
    label: str
    seed_index: int
    config: str                 # YAML of the resolved trial config
    store: str
    sweep: str
    parent: str | None
    mutation: str | None
    threads: int
    code: tuple
    tasks: tuple
    eval_limit: int | None
    eval_data: str | None
    iters: int
    tokens_per_iter: int
    gpu: int = 0
    wall_before: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["code"], d["tasks"] = list(self.code), list(self.tasks)
        return d


@dataclass(frozen=True)
class SpecContext:
    """The sweep-wide parts of every trial spec."""
    sweep_id: str
    out: Path
    store: str
    base_seed: int
    threads: int
    code: tuple
    tasks: tuple
    eval_limit: int | None
    eval_data: str | None


def trial_spec(ctx: SpecContext, cand: Candidate, seed_index: int, iters: int, final: int,
               with_tasks: bool) -> TrialSpec:
    """Candidate `cand` on seed index `seed_index`, trained to `iters` of a schedule that ends at `final`
    (halving's early rungs stop part-way along the full-budget schedule and continue from there)."""
    seed = cand.cfg.training.seed + seed_index
    cfg = cand.cfg.replace({"training.seed": seed, "training.max_iters": iters, "training.lr_decay_iters": final,
                            "training.eval_interval": min(cand.cfg.training.eval_interval, final),
                            "out_dir": str(ctx.out / "trials" / cand.label / f"s{seed}")})
    parent = None if cand.label == "baseline" else f"{ctx.sweep_id}/baseline/s{ctx.base_seed + seed_index}"
    return TrialSpec(id=f"{ctx.sweep_id}/{cand.label}/s{seed}", label=cand.label, seed_index=seed_index,
                     config=cfg.to_yaml(), store=ctx.store, sweep=ctx.sweep_id, parent=parent,
                     mutation=cand.mutation, threads=ctx.threads, code=ctx.code,
                     tasks=ctx.tasks if with_tasks else (), eval_limit=ctx.eval_limit, eval_data=ctx.eval_data,
                     iters=iters, tokens_per_iter=tokens_per_iter(cand.cfg))


# --------------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------------
def plan_candidates(base: ExperimentConfig, base_path: str, opts: SweepOptions,
                    variants: list[str] | None = None) -> list[Candidate]:
    """The baseline and one candidate per variant (default opts.variants); refused and no-op variants are
    kept, with the reason, but not trained; an unknown variant refuses the whole sweep."""
    from foundry.mutate import get_type
    get_type(opts.type)  # unknown type: fail before anything runs
    if opts.heal:  # surgeries of a pretrained base, each healed on the same tokens (foundry/surgery/sweep.py)
        from foundry.surgery.sweep import healing_candidates
        return healing_candidates(base, base_path, opts, variants)
    cands = [Candidate("baseline", base, None)]
    seen = {base.hash(): "baseline"}
    for v in opts.variants if variants is None else variants:
        cands.append(mutant(base, base_path, opts.type, v, seen))
    check_ranking(cands, opts)
    return cands


# objectives whose validation measures no bits per byte, the sweep's ranking metric without an eval task
NO_BPB_OBJECTIVES = ("dpo",)


def check_ranking(cands: list[Candidate], opts: SweepOptions) -> None:
    """Refuse, before anything trains, a sweep with nothing to rank by: a DPO trial's validation is preference
    loss and accuracy on held-out pairs (foundry/trainer/objectives.py), not bits per byte, so such a sweep
    ranks by a capability task."""
    odd = [c.label for c in cands if c.cfg is not None and c.cfg.training.objective in NO_BPB_OBJECTIVES]
    if odd and not opts.tasks:
        raise SweepError(f"{', '.join(odd)} train(s) with the dpo objective, whose validation reports preference "
                         f"loss and accuracy, not the bits per byte a sweep ranks by without a task; rank by a "
                         f"capability instead: add --eval-task hh_rlhf (with --eval-limit N after data.reserved "
                         f"held N records out of DPO training) or another task")


def mutant(base: ExperimentConfig, base_path: str, type_name: str, variant: str, seen: dict) -> Candidate:
    """One variant as a candidate; `seen` maps config hashes to labels (a duplicate is a no-op)."""
    from foundry.mutate import MutationError, NoOpMutation, UnknownMutation, apply_mutation, get_type
    mutation = f"{type_name} {variant}"
    label = get_type(type_name).file_stem(variant)
    try:
        cfg = apply_mutation(base, type_name, variant, parent=base_path)
    except NoOpMutation as e:
        return Candidate(label, None, mutation, str(e), "noop")
    except UnknownMutation as e:
        raise SweepError(str(e)) from None  # a typo: refuse the whole sweep before training anything
    except MutationError as e:  # refused with the reason: reported, not trained
        return Candidate(label, None, mutation, str(e), "refused")
    label = Path(cfg.out_dir).name
    if cfg.hash() in seen:
        return Candidate(label, None, mutation, f"no-op: the same experiment as {seen[cfg.hash()]}", "noop")
    seen[cfg.hash()] = label
    return Candidate(label, cfg, mutation)


# --------------------------------------------------------------------------------------------------
# Budgets and rungs
# --------------------------------------------------------------------------------------------------
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


def budget_of(base: ExperimentConfig, budget: tuple[str, float] | None) -> tuple[tuple[str, float], str]:
    """The budget (the base config's tokens when none is given) and its description."""
    if budget is not None:
        return budget, f"{budget[0]}={budget[1]:g} each"
    tokens = base.training.max_iters * tokens_per_iter(base)
    return ("tokens", float(tokens)), (f"{tokens:,} tokens each (the base config's {base.training.max_iters} "
                                       f"iterations x {tokens_per_iter(base)} tokens)")


def resolve_iters(cands: list[Candidate], base: ExperimentConfig, budget: tuple[str, float] | None,
                  threads: int) -> tuple[dict[str, int], str]:
    """Iterations per candidate so every candidate gets the same budget, and the budget in words."""
    (kind, value), text = budget_of(base, budget)
    iters = {c.label: iters_for(c.cfg, kind, value, threads) for c in cands if c.cfg is not None}
    if kind == "flops":
        text += " (iterations from each model's forward+backward FLOPs per token)"
    if kind == "seconds":
        text += " (iterations from a timed probe of each candidate, recorded so a resume uses the same)"
    return iters, text


def iters_for(cfg: ExperimentConfig, kind: str, value: float, threads: int) -> int:
    tpi = tokens_per_iter(cfg)
    if kind == "tokens":
        n = value / tpi
    elif kind == "flops":
        n = value / (_flops_per_token(cfg) * tpi)
    else:
        from foundry.sweep.worker import probe_seconds_per_iter
        n = value / probe_seconds_per_iter(cfg.to_yaml(), threads)
    return max(1, int(round(n)))


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
