"""The promotion rule: select on screening seeds, confirm the winner alone on fresh seeds (torch-free, pure).

    rule = Rule(alpha=0.05, min_effect=None, screen_seeds=3, confirm_seeds=3, adaptive=False)
    m = margin_for(rule, base_screen_values)                     # the gain that matters
    tests = screen(base, mutants, higher_is_better)              # each mutant's paired gain with a 95% CI
    win = select(tests)                                          # the only mutant that will be tested
    step = confirm_step(rule, m, confirm_gains, look)            # promote | reject | futile | more seeds

Why this design. Picking the best of K mutants on some seeds and testing it on the same seeds inflates the
false-promotion rate with K (the winner's gain is the maximum of K noisy gains): ~5% at K=1, ~15% at K=6 for a
nominal 5%. Successive halving selects again at every rung and makes it no better. Here every selection (the
ranking, halving's rungs, adaptive screening) uses the screening seeds only; the winner and the baseline are then
trained on confirmation seeds that took no part in any selection, and one one-sided paired t-test on those seeds
decides. Conditional on whichever mutant was selected, that test has level alpha, so the probability of
promoting any mutant whose true gain is <= the margin is <= alpha for every K, with or without halving: no
multiplicity correction is needed because only one hypothesis is ever tested (Bauer & Kieser 1999 call this
two-stage select-then-confirm design "adaptive seamless" when the stages are pooled; we do not pool, which keeps
it exact). A Dunnett or Holm correction over all K mutants on shared seeds would also control the error, but
with 2-5 seeds its critical values grow fast with K and it spends the same seeds on every mutant; the
confirmation design spends extra compute only on the one candidate that could be promoted.

The margin: the gain must exceed the seed-to-seed standard deviation a rerun with another seed shows (pooled over
the screening seeds of the baseline and the mutants) unless --min-effect sets it. It is estimated from screening
data only, so it is fixed before the confirmation data exist.

Adaptive seeds. Screening: every candidate starts on 2 seeds; a mutant whose 80% upper bound on the gain is below
the margin or below the leader's lower bound stops (it cannot be the winner); the rest get one more seed at a
time up to the screening count. Screening may stop or select in any way without touching the guarantee, since it
never decides a promotion. Confirmation: looks at 3, 4, ..., C fresh seeds with O'Brien-Fleming alpha-spending
boundaries (foundry.sweep.stats.sequential_bounds), and a non-binding futility stop when the gain estimate is not
above the margin at an interim look; the overall level stays alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from foundry.sweep.stats import crossed_test, margin_test, pooled_sd, sequential_bounds, tail_of

MIN_SCREEN = 2     # adaptive screening starts here: the fewest seeds that estimate a spread
FIRST_LOOK = 3     # adaptive confirmation's first look (at 2 seeds, df = 1, the spending boundary is ~160)


@dataclass(frozen=True)
class Rule:
    """What a sweep's promotion is judged by (frozen: part of the sweep's identity)."""
    alpha: float = 0.05
    min_effect: float | None = None     # None: the baseline's screening seed-to-seed SD
    screen_seeds: int = 3
    confirm_seeds: int = 3
    adaptive: bool = False
    mutants: int = 1                    # how many compete for the screening win (the noise floor's power)
    keep: tuple[int, ...] = ()          # successive halving: the mutants kept at each rung

    def looks(self) -> tuple[int, ...]:
        """Confirmation seed counts at which the test is done."""
        if not self.adaptive or self.confirm_seeds <= FIRST_LOOK:
            return (self.confirm_seeds,)
        return tuple(range(FIRST_LOOK, self.confirm_seeds + 1))

    def bounds(self) -> tuple[float, ...]:
        return sequential_bounds(self.looks(), self.alpha)

    def text(self, unit: str) -> str:
        looks = self.looks()
        seq = (f" at looks of {', '.join(map(str, looks))} fresh seeds with O'Brien-Fleming alpha-spending "
               f"boundaries t > {', '.join(f'{b:.2f}' for b in self.bounds())} (stopping early for futility when "
               f"the gain is not above the margin)" if len(looks) > 1 else "")
        margin = (f"{self.min_effect:g} (--min-effect)" if self.min_effect is not None else
                  "the seed-to-seed standard deviation on the screening seeds (pooled over the candidates)")
        return (f"select the mutant with the largest mean paired gain in {unit} over the screening seeds "
                f"({'2 up to ' if self.adaptive else ''}{self.screen_seeds}); retrain it and the baseline on "
                f"{self.confirm_seeds} fresh seeds that took no part in any selection; promote it only if a "
                f"one-sided paired t-test on those seeds rejects 'gain <= margin' at alpha = {self.alpha:g}{seq}; "
                f"margin = {margin}")

    def correction(self) -> str:
        return ("none needed: one hypothesis per sweep, tested on data independent of the selection, so the "
                f"family-wise false-promotion rate over all mutants is <= {self.alpha:g} for any number of them "
                "and with successive halving" + ("; alpha spent over the confirmation looks (O'Brien-Fleming)"
                                                 if len(self.looks()) > 1 else ""))


# --------------------------------------------------------------------------------------------------
# Samples: {seed index: value}, paired on the seed indices both sides have
# --------------------------------------------------------------------------------------------------
def paired_gains(base: dict[int, float], cand: dict[int, float], higher_is_better: bool) -> list[float]:
    """Per-seed gains (positive: the candidate is better) on the seed indices both sides finished."""
    common = sorted(set(base) & set(cand))
    sign = 1.0 if higher_is_better else -1.0
    return [sign * (cand[i] - base[i]) for i in common]


def margin_for(rule: Rule, screen_samples: list[dict[int, float]]) -> tuple[float, float, str]:
    """The smallest gain worth promoting, its effective degrees of freedom (0: set, not estimated) and its
    source. Default: the unpaired seed-to-seed SD (what a rerun with another seed shows), pooled over the
    screening seeds of the baseline (first) and every mutant: one baseline's 2-5 seeds alone estimate it so
    loosely that the margin's own noise would dominate the confirmation test. Candidates on the same seed share
    its initialisation and data order, so the pooled estimate is far less certain than its (K + 1)(S - 1) df
    suggest; its effective df come from shared_seed_df."""
    if rule.min_effect is not None:
        return float(rule.min_effect), 0, f"--min-effect {rule.min_effect:g}"
    sd, df = pooled_sd([list(s.values()) for s in screen_samples])
    if not df:
        return math.nan, 0, "no candidate ran on 2 or more screening seeds"
    base = screen_samples[0]
    run_sd, _ = pooled_sd([paired_gains(base, s, True) for s in screen_samples[1:]])
    share = max(0.0, 1 - (run_sd ** 2 / 2) / sd ** 2) if math.isfinite(run_sd) and sd > 0 else 1.0
    eff = shared_seed_df([len(s) for s in screen_samples], share)
    return sd, eff, (f"the seed-to-seed SD, pooled over the screening seeds of the baseline and the mutants "
                     f"({sd:.4g}, {eff:.3g} effective df of {df})")


def shared_seed_df(counts: list[int], share: float) -> float:
    """Effective degrees of freedom (Satterthwaite 1946) of a variance pooled over samples j with counts[j]
    values on the seed indices 0..counts[j]-1, when a fraction `share` of each value's variance is a seed effect
    common to every sample on that seed: the samples' sums of squares are then correlated, with
    Cov(SS_j, SS_k) ~ 2 share^2 var^2 (min(n_j, n_k) - 1). share 0: sum (n_j - 1); share 1: max n_j - 1."""
    dfs = [n - 1 for n in counts if n >= 2]
    if not dfs:
        return 0.0
    cross = sum(min(a, b) for i, a in enumerate(dfs) for j, b in enumerate(dfs) if i != j)
    return float(sum(dfs) ** 2 / (sum(dfs) + share ** 2 * cross))


def screen(base: dict[int, float], mutants: dict[str, dict[int, float]], higher_is_better: bool) -> dict:
    """Each mutant's paired gain over the screening seeds with a two-sided 95% CI (selection-biased for the
    winner: that is why the winner is confirmed on fresh seeds)."""
    return {k: margin_test(paired_gains(base, v, higher_is_better), 0.0) for k, v in mutants.items()}


def select(tests: dict[str, dict]) -> str | None:
    """The mutant with the largest mean screening gain (>= 1 paired seed)."""
    ok = [k for k, t in tests.items() if t["n"] >= 1 and math.isfinite(t["mean"])]
    return max(ok, key=lambda k: tests[k]["mean"]) if ok else None


def screen_open(tests: dict[str, dict], margin: float, n_max: int) -> list[str]:
    """Adaptive screening: the mutants that still need seeds. Closed: every screening seed run; clearly worse
    (80% upper bound below the margin or below the leader's 80% lower bound); or clearly the best (its lower
    bound above every other's upper bound: the selection is made)."""
    bounds = {k: _interval(t, 0.8) for k, t in tests.items() if t["n"] >= 2}
    if not bounds:
        return [k for k, t in tests.items() if t["n"] < n_max]
    leader = max(bounds, key=lambda k: tests[k]["mean"])
    lead_lo = bounds[leader][0]
    if all(lead_lo > hi for k, (lo, hi) in bounds.items() if k != leader) and lead_lo > margin:
        return []
    open_ = []
    for k, t in tests.items():
        if t["n"] >= n_max:
            continue
        hi = bounds.get(k, (None, math.inf))[1]
        if k == leader or (hi >= margin and hi >= lead_lo):
            open_.append(k)
    return open_


def _interval(t: dict, conf: float) -> tuple[float, float]:
    if not t["se"] > 0:
        return (t["mean"], t["mean"])
    half = float(sps.t.ppf(0.5 + conf / 2, t["df"])) * t["se"]
    return (t["mean"] - half, t["mean"] + half)


# --------------------------------------------------------------------------------------------------
# Confirmation
# --------------------------------------------------------------------------------------------------
def confirm_step(rule: Rule, margin: float, gains: list[float] | np.ndarray, look: int) -> tuple[str, dict]:
    """The test at confirmation look `look` (an index into rule.looks()). `gains`: per-seed gains, or a
    (seeds, items) array of per-item gains for a capability score. Returns (verdict, test) with verdict
    'promote' | 'reject' (final look, not significant) | 'futile' (interim stop) | 'more' (add seeds)."""
    looks, bounds = rule.looks(), rule.bounds()
    crit = bounds[look]
    if isinstance(gains, np.ndarray) and gains.ndim == 2:
        test = crossed_test(gains, margin, rule.alpha)
        # the boundary as a nominal tail probability, applied at the crossed test's own df
        test["t_crit"] = float(sps.t.isf(tail_of(crit, looks[look] - 1), test["df"])) if test["df"] else math.inf
    else:
        test = margin_test(gains, margin, rule.alpha, crit=crit)
    test["look"], test["looks"], test["bounds"] = look, list(looks), list(bounds)
    if test["t"] > test["t_crit"]:
        return "promote", test
    if look == len(looks) - 1:
        return "reject", test
    if not test["mean"] > margin:
        return "futile", test
    return "more", test


def paired_noise(screen_tests: dict[str, dict]) -> tuple[float, float]:
    """The paired seed-to-seed SD of the gain, pooled over every mutant's screening seeds, and its effective df:
    every mutant's gains share the baseline's runs (correlation 1/2 with equal run noise: half of each paired
    difference's variance is the baseline's), see shared_seed_df."""
    sd, _ = pooled_sd([t["diffs"] for t in screen_tests.values()])
    return sd, shared_seed_df([len(t["diffs"]) for t in screen_tests.values()], 0.5)


def noise_floor(sd: float, df: float, rule: Rule, margin: float, margin_df: float = 0, upper: float = 0.8) -> dict:
    """The paired seed-to-seed SD `sd` (on `df` degrees of freedom, see paired_noise) and the smallest gain the
    sweep could detect at 80% and 90% power: the gain of one mutant among rule.mutants (the others no better
    than the baseline) that the whole rule - surviving halving, winning the screening, passing the gate and the
    confirmation on fresh seeds - promotes with that probability (foundry.sweep.power). Both noise figures enter
    at their `upper` one-sided confidence bound (sd * sqrt(df / chi2_{1-upper, df})): from 2-5 seeds a plug-in
    SD is low as often as high, and a report that over-promised its power would invite reading a miss as no
    effect."""
    from foundry.sweep.power import detectable
    sd_up = _upper_sd(sd, df, upper)
    m_up = _upper_sd(margin, margin_df, upper) if margin_df else margin
    size = detectable(rule, m_up / sd_up if sd_up > 0 else math.nan, margin_df, (0.8, 0.9))
    return {"paired_sd": sd, "paired_sd_df": df, "confirm_seeds": rule.confirm_seeds, "mutants": rule.mutants,
            "halving_keep": list(rule.keep), "upper_bound": upper,
            "detectable_80": size[0.8] * sd_up, "detectable_90": size[0.9] * sd_up}


def _upper_sd(sd: float, df: float, level: float) -> float:
    if not df or not math.isfinite(sd):
        return math.nan
    return sd * math.sqrt(df / sps.chi2.ppf(1 - level, df))


def verdict_text(verdict: str, win: str | None, test: dict | None, unit: str, margin: float) -> str:
    """One sentence for the decision, with its numbers."""
    if win is None:
        return "no promotion: the baseline or every mutant failed to finish its screening seeds"
    if test is None:
        return (f"no promotion: the best screened mutant, {win}, does not gain more than the margin "
                f"{margin:.4g} {unit} on the screening seeds, so it was not confirmed")
    if test.get("error"):
        return f"no promotion: {win} won the screening but {test['error']}"
    lo, hi = test["ci"]
    nums = (f"{test['mean']:+.4f} {unit} over {test['n']} fresh seeds (95% CI {lo:+.4f} .. {hi:+.4f}; "
            f"t = {test['t']:.2f} vs critical {test['t_crit']:.2f}, df {test['df']:.3g}; margin {margin:.4g}; "
            f"one-sided p = {test['p']:.3g} against 'gain <= margin')")
    if verdict == "promote":
        return f"PROMOTE {win}: confirmed on fresh seeds, gain {nums}"
    why = "stopped early for futility" if verdict == "futile" else "not beyond the margin"
    return f"no promotion: {win} won the screening but on confirmation gains {nums}: {why}"
