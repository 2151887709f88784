"""`--search tpe | gp`: a model-based search over one numeric mutation type, through Optuna.

    python -m foundry.cli.sweep lr x0.3 x30 --search tpe --trials 8 --seeds 3
    python -m foundry.cli.sweep lr x0.01 x100 --search gp --trials 8 --seeds 1 --min-effect 0.02

Samplers (SAMPLERS): `tpe`, the tree-structured Parzen estimator (Bergstra et al. 2011; Optuna's
TPESampler), and `gp`, Gaussian-process Bayesian optimisation with a noisy objective (Optuna's GPSampler:
a Matern-5/2 kernel and log expected improvement). With few trials over one smooth dimension - a learning
rate over a range of decades - the GP interpolates between the trials and refines the optimum where TPE,
whose good/bad split is one or two trials at 8, still spends trials on the range's ends
(`python bench/bench_promotion.py real --only tpe` measures both against a 4-point grid).

The two variants are the range (resolved against the base, so `x0.3 x30` is relative to its learning rate).
Each trial is an ordinary mutant (`lr 0.00123`): trained under the same budget on the same paired screening
seeds as every grid candidate, scored by its mean paired gain over the baseline on those seeds. After the last
trial the sweep goes on exactly as a grid sweep does: the best trial is the screening winner and only a
confirmation on fresh seeds can promote it, so the search's many looks at the screening seeds cost nothing in
false promotions. Compute: trials x seeds runs at the full budget, as a grid of as many variants.

Start: the first max(2, trials/3) values are a centred grid on the (log) range - quantiles 1/2n, 3/2n, ... -
instead of random draws, so the model starts from an even cover of the range; the sampler proposes the rest.

With --halving (multi-fidelity): each trial is trained only to the first rung (budget / eta^(rungs-1), on the
same paired screening seeds, on the full-budget schedule) and scored there, so a budget buys about eta times
as many looks at the range; the sweep's successive halving then continues the best 1/eta of the trials along
the same schedule to the full budget, and the best of those at the full budget is the screening winner. Compute
per seed: trials x rung + ceil(trials / eta) x (budget - rung) iterations (8 trials at eta 4 cost 3.5 full
trials). The search then optimises the rung's gain, a noisier and earlier view of the full one: a change whose
benefit appears only late is better searched without --halving.

Resume: every asked value is written to OUT/sweep.json before it trains; a resumed search replays the recorded
trials into a fresh study (their results come from the store) and asks only for the rest.
Classical optimisers beat LLM agents on fixed search spaces (Ferreira et al. 2026); a hand-picked grid is the
weak baseline (`python bench/bench_promotion.py real` measures it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from foundry.sweep.plan import SEARCHES, SweepError, budget_of, iters_for, mutant, parse_budget, rung_iters
from foundry.sweep.results import ranking_metric, samples


@dataclass(frozen=True)
class Space:
    """A numeric mutation type: the config field it sets, whether it is an integer, whether to search in log."""
    key: str
    integer: bool = False
    log: bool = True


SPACES = {"lr": Space("training.learning_rate"), "warmup": Space("training.warmup_iters", True, False),
          "weight_decay": Space("training.weight_decay", log=False), "batch_size": Space("training.batch_size", True),
          "dropout": Space("model_args.dropout", log=False), "grad_clip": Space("training.grad_clip", log=False),
          "z_loss": Space("training.z_loss"), "rope_theta": Space("model_args.rope.theta"),
          "softcap": Space("model_args.attn_softcap", log=False)}


def _value(cfg, key: str) -> float:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return float(obj)


def search_range(sweep) -> tuple[Space, float, float]:
    """The space and its bounds, from the two variants resolved against the base."""
    from foundry.mutate import MutationError
    o = sweep.opts
    if o.type not in SPACES:
        raise SweepError(f"--search {o.search} searches a numeric type; {o.type!r} is not one of {', '.join(SPACES)}")
    space = SPACES[o.type]
    try:
        lo, hi = sorted(_bound(sweep.base, o.type, v, space.key) for v in o.variants)
    except MutationError as e:
        raise SweepError(f"--search {o.search} range {' '.join(o.variants)}: {e}") from None
    if not hi > lo or (space.log and lo <= 0):
        raise SweepError(f"--search {o.search} range {lo:g} .. {hi:g}: needs LOW < HIGH" +
                         (" and LOW > 0 (searched on a log scale)" if space.log else ""))
    return space, lo, hi


def _bound(base, type_name: str, variant: str, key: str) -> float:
    """A range end resolved against the base (an end equal to the base's value is a no-op mutation: that value)."""
    from foundry.mutate import NoOpMutation, apply_mutation
    try:
        return _value(apply_mutation(base, type_name, variant), key)
    except NoOpMutation:
        return _value(base, key)


def _variant(space: Space, x: float) -> str:
    return str(int(round(x))) if space.integer else f"{x:.4g}"


SAMPLERS = SEARCHES[1:]  # what make_sampler builds


def make_sampler(optuna, name: str, n_startup: int):
    """The Optuna sampler of --search NAME, seeded (a resumed search proposes what the first run would)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=0, n_startup_trials=n_startup)
    if name == "gp":  # noisy objective: seed-to-seed noise is part of every trial's score
        return optuna.samplers.GPSampler(seed=0, n_startup_trials=n_startup, deterministic_objective=False)
    raise SweepError(f"--search {name!r}: choose grid or one of {', '.join(SAMPLERS)}")


def run_search(sweep) -> None:
    """Ask, train on the screening seeds, tell, until --trials are done; appends each trial to sweep.cands."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError("--search tpe / gp needs optuna: pip install 'foundry[search]'") from None
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState
    FAIL = TrialState.FAIL
    # ERROR: the GP sampler warns on every ask that it optimises its acquisition without greenlet
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    o = sweep.opts
    space, lo, hi = search_range(sweep)
    dist = (IntDistribution(int(lo), int(hi), log=space.log) if space.integer else
            FloatDistribution(lo, hi, log=space.log))
    start = startup_values(space, lo, hi, max(2, round(o.trials / 3)))
    sampler = make_sampler(optuna, o.search, len(start))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    entries = sweep.state.setdefault("search", [])
    _train(sweep, [e["label"] for e in entries])  # recorded trials (a resume): finish any left mid-way
    for e in entries:
        g = _gain(sweep, e["label"])
        study.add_trial(optuna.trial.create_trial(params={"x": e["value"]}, distributions={"x": dist},
                                                  **({"value": g} if math.isfinite(g) else {"state": FAIL})))
    where = "at the first halving rung" if o.halving else "over the screening seeds"
    while len(entries) < o.trials:
        for x in start[len(entries):len(entries) + min(o.jobs, o.trials - len(entries))]:
            study.enqueue_trial({"x": x})
        asked = [study.ask({"x": dist}) for _ in range(min(o.jobs, o.trials - len(entries)))]
        labels = [_add(sweep, space, t.params["x"]) for t in asked]
        sweep.save_state()  # before training: a resume replays these values
        _train(sweep, labels)
        for t, lab in zip(asked, labels):
            g = _gain(sweep, lab)
            study.tell(t, g) if math.isfinite(g) else study.tell(t, state=FAIL)
        best = max(entries, key=lambda e: _gain(sweep, e["label"]))
        sweep.say(f"{o.search}: {len(entries)}/{o.trials} trials; best so far {best['label']} "
                  f"(gain {_gain(sweep, best['label']):+.4f} {where})")


def startup_values(space: Space, lo: float, hi: float, n: int) -> list[float]:
    """n values at the centred quantiles (2i + 1) / 2n of the range, on a log scale where the space is."""
    f = [(2 * i + 1) / (2 * n) for i in range(n)]
    if space.log:
        xs = [math.exp(math.log(lo) + q * (math.log(hi) - math.log(lo))) for q in f]
    else:
        xs = [lo + q * (hi - lo) for q in f]
    return [float(round(x)) if space.integer else x for x in xs]


def _add(sweep, space: Space, x: float) -> str:
    """Trial value x as a candidate (its iterations under the sweep's budget) recorded in the state."""
    seen = {c.cfg.hash(): c.label for c in sweep.cands if c.cfg is not None}
    cand = mutant(sweep.base, sweep.state["base_path"], sweep.opts.type, _variant(space, x), seen)
    if cand.cfg is None:  # the same value as an earlier trial (rounded) or refused: scored as that one
        label = next((lab for lab in seen.values() if cand.error and lab in cand.error), None)
        sweep.state["search"].append({"variant": _variant(space, x), "value": x, "label": label or cand.label})
        return label or cand.label
    (kind, value), _ = budget_of(sweep.base, parse_budget(sweep.opts.budget))
    sweep.state["iters"][cand.label] = iters_for(cand.cfg, kind, value, sweep.threads)
    sweep.cands.append(cand)
    sweep.state["search"].append({"variant": _variant(space, x), "value": x, "label": cand.label})
    return cand.label


def _rung(sweep, label: str) -> int | None:
    """With --halving, the iteration of the first rung (where a trial is scored); None: the full budget."""
    o = sweep.opts
    return rung_iters(sweep.state["iters"][label], o.eta, o.rungs)[0] if o.halving else None


def _train(sweep, labels: list[str]) -> None:
    """The baseline and the given trials on the screening seeds, to the first rung (--halving) or in full."""
    by = {c.label: c for c in sweep.cands if c.cfg is not None}
    todo = sorted({"baseline", *[lab for lab in labels if lab in by]})
    if not sweep.opts.halving:
        sweep.run_seeds({lab: sweep.seeds.screening() for lab in todo})
        return
    sweep.trials.run([s for lab in todo for s in sweep.specs(by[lab], sweep.seeds.screening(),
                                                             _rung(sweep, lab), False)])


def _gain(sweep, label: str) -> float:
    """Mean paired gain over the screening seeds (the objective; in validation bits per byte at the first rung
    with --halving, as halving ranks); a failed or refused trial scores -inf."""
    by = {c.label: c for c in sweep.cands}
    if label not in by or by[label].cfg is None:
        return -math.inf
    if sweep.opts.halving:
        base, cand = (sweep._bpb_at(by[k], _rung(sweep, k)) for k in ("baseline", label))
        return sum(b - c for b, c in zip(base, cand)) / len(cand) if base and cand else -math.inf
    idx = sweep.seeds.screening()
    res = {k: sweep.result(by[k], idx) for k in ("baseline", label)}
    how = ranking_metric(res, sweep.opts.tasks)
    base, cand = samples(res["baseline"], how), samples(res[label], how)
    common = sorted(set(base) & set(cand))
    if not common:
        return -math.inf
    sign = 1.0 if how["metric"] == "capability" else -1.0
    return sum(sign * (cand[i] - base[i]) for i in common) / len(common)
