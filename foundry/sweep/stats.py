"""The statistics behind promotion (torch-free; SciPy's distributions, no hand-written special functions).

    margin_test(diffs, margin, alpha)          one-sided paired t-test of H0: gain <= margin (per-seed gains)
    crossed_test(D, margin, alpha)             the same for a capability score, D[seed, item] paired both ways
    pooled_sd(groups)                          pooled standard deviation of several samples, with its df
    detectable_gain(sd, n, margin, crit)       the gain the confirmation test alone passes with 80% power
                                               (noncentral t; the whole rule's: foundry.sweep.power)
    sequential_bounds(looks, alpha)            group-sequential t boundaries, Lan-DeMets alpha spending
    paired_test(base, cand, higher_is_better)  margin_test of the per-seed gains against 0 (foundry.cli.compare)

Gains are signed so that positive means the candidate is better (lower bits per byte, higher capability).

Why a margin: pairing by seed cancels most run-to-run noise, so a plain test of "gain > 0" calls gains of a
thousandth of a bit significant that no rerun would notice. Testing "gain > margin" (a one-sided
non-inferiority-style test with the margin on the other side: Wellek 2010, ch. 1) promotes only gains that matter.

Sequential boundaries: under H0 (gain = margin, normal per-seed gains) the sequence of t statistics
t_k = (mean_k - margin) / (sd_k / sqrt(n_k)) at looks n_1 < ... < n_K is pivotal: its joint law depends on the
look schedule only, not on the noise level. So exact boundaries come from one seeded Monte Carlo of standard
normals: at look k, c_k is set so that P(cross at k, not before) = alpha(tau_k) - alpha(tau_{k-1}) with the
O'Brien-Fleming-type spending alpha(tau) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(tau)) (Lan & DeMets 1983),
tau_k = n_k / n_K. Stopping early for futility never crosses a boundary, so it only lowers the error (non-binding).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import optimize, stats


def margin_test(diffs: Sequence[float], margin: float = 0.0, alpha: float = 0.05, crit: float | None = None,
                conf: float = 0.95) -> dict:
    """One-sided paired t-test that the mean gain exceeds `margin`. `crit` replaces the fixed-sample critical
    value (a sequential boundary). Returns n, diffs, mean, sd, se, t, df, p, t_crit, ci (two-sided `conf`)."""
    d = np.asarray(list(diffs), dtype=float)
    n = d.size
    out = {"n": n, "diffs": d.tolist(), "mean": float(d.mean()) if n else math.nan, "margin": float(margin),
           "alpha": alpha, "sd": math.nan, "se": math.nan, "t": math.nan, "df": max(n - 1, 0), "p": math.nan,
           "t_crit": math.nan, "ci": [math.nan, math.nan]}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    return _t_result(out, out["mean"], sd / math.sqrt(n), n - 1, margin, alpha, crit, conf, sd=sd)


def _t_result(out: dict, mean: float, se: float, df: float, margin: float, alpha: float, crit: float | None,
              conf: float, **extra) -> dict:
    if se > 0:
        t = (mean - margin) / se
    else:  # every seed gained exactly the same: the sign decides
        t = math.inf if mean > margin else (-math.inf if mean < margin else 0.0)
    half = stats.t.ppf(0.5 + conf / 2, df) * se
    out.update(extra, se=float(se), t=float(t), df=float(df), p=float(stats.t.sf(t, df)),
               t_crit=float(stats.t.ppf(1 - alpha, df)) if crit is None else float(crit),
               ci=[float(mean - half), float(mean + half)])
    return out


def crossed_test(D: np.ndarray, margin: float = 0.0, alpha: float = 0.05, crit: float | None = None,
                 conf: float = 0.95) -> dict:
    """Capability gain with items and seeds as crossed random factors. D[s, i] = score of the candidate minus
    the baseline's on item i, both trained with seed s (paired per seed and per item).

    Two-way ANOVA without replication: y_si = mu + a_s + b_i + e_si. The grand mean's variance is
    s_a^2/S + s_b^2/I + s_e^2/(SI), estimated by (MS_seed + MS_item - MS_resid)/(SI) (Cornfield & Tukey 1956),
    with Satterthwaite's (1946) degrees of freedom; a component estimated below zero is dropped. A test over
    seeds alone would ignore that a different sample of items could rank the two the other way."""
    D = np.asarray(D, dtype=float)
    S, I = D.shape
    mean = float(D.mean())
    out = {"n": S, "items": I, "diffs": D.mean(axis=1).tolist(), "mean": mean, "margin": float(margin),
           "alpha": alpha, "sd": math.nan, "se": math.nan, "t": math.nan, "df": 0, "p": math.nan,
           "t_crit": math.nan, "ci": [math.nan, math.nan]}
    if S < 2 or I < 2:
        return out
    ms_seed = float(I * D.mean(axis=1).var(ddof=1))
    ms_item = float(S * D.mean(axis=0).var(ddof=1))
    resid = D - D.mean(axis=1, keepdims=True) - D.mean(axis=0, keepdims=True) + mean
    ms_err = float((resid ** 2).sum() / ((S - 1) * (I - 1)))
    terms = [(1.0, ms_seed, S - 1), (1.0, ms_item, I - 1), (-1.0, ms_err, (S - 1) * (I - 1))]
    if ms_seed < ms_err or ms_item < ms_err:  # a variance component estimated <= 0: keep the larger factor
        terms = [max(terms[:2], key=lambda x: x[1])]
    var = sum(c * ms for c, ms, _ in terms) / (S * I)
    df = var ** 2 / sum((c * ms / (S * I)) ** 2 / k for c, ms, k in terms) if var > 0 else S - 1
    return _t_result(out, mean, math.sqrt(max(var, 0.0)), df, margin, alpha, crit, conf,
                     sd=float(D.mean(axis=1).std(ddof=1)),
                     components={"ms_seed": ms_seed, "ms_item": ms_item, "ms_resid": ms_err})


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """sqrt(sum (n_j - 1) s_j^2 / sum (n_j - 1)) over the groups with >= 2 values, and its degrees of freedom."""
    ss, df = 0.0, 0
    for g in groups:
        g = np.asarray(list(g), dtype=float)
        if g.size >= 2:
            ss += float(((g - g.mean()) ** 2).sum())
            df += g.size - 1
    return (math.sqrt(ss / df) if df else math.nan), df


def detectable_gain(sd: float, n: int, margin: float, crit: float, power: float = 0.8,
                    margin_df: int | None = None) -> float:
    """The true gain a one-sided t-test on n paired seeds (critical value `crit`, df n-1) promotes with
    probability `power`, for per-seed gains with standard deviation `sd`.

    With a known margin: margin + ncp * sd / sqrt(n), where the noncentral t with noncentrality ncp exceeds
    `crit` with probability `power`. With a margin estimated as a standard deviation on `margin_df` degrees of
    freedom, its own noise (variance ~ margin^2 / (2 df)) adds to the mean gain's: the statistic is then r times
    a noncentral t, r = sqrt(1 + n v_m / sd^2), with noncentrality (gain - margin) / sqrt(sd^2/n + v_m)."""
    if n < 2 or not sd > 0 or not math.isfinite(crit):
        return math.nan
    df = n - 1
    v_m = margin ** 2 / (2 * margin_df) if margin_df else 0.0
    scale = math.sqrt(sd * sd / n + v_m)
    r = scale / (sd / math.sqrt(n))
    ncp = optimize.brentq(lambda c: stats.nct.sf(crit / r, df, c) - power, -50, 500)
    return margin + ncp * scale


def obrien_fleming_spent(tau: float, alpha: float) -> float:
    """Cumulative one-sided alpha spent by information fraction tau (Lan-DeMets O'Brien-Fleming type)."""
    if tau >= 1:
        return alpha
    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(tau)))


@lru_cache(maxsize=64)
def sequential_bounds(looks: tuple[int, ...], alpha: float, sims: int = 200_000, seed: int = 20260) -> tuple:
    """Critical t values (one per look, at n = looks[k] paired seeds) with overall one-sided level alpha.
    A single look gives the fixed-sample t quantile exactly."""
    if any(n < 2 for n in looks) or list(looks) != sorted(set(looks)):
        raise ValueError(f"looks must be increasing seed counts >= 2, got {looks}")
    if len(looks) == 1:
        return (float(stats.t.isf(alpha, looks[0] - 1)),)
    z = np.random.default_rng(seed).standard_normal((sims, looks[-1]))
    n = np.arange(1, looks[-1] + 1)
    mean = np.cumsum(z, axis=1) / n
    var = (np.cumsum(z * z, axis=1) - n * mean ** 2) / np.maximum(n - 1, 1)
    alive = np.ones(sims, dtype=bool)
    bounds, spent = [], 0.0
    for nk in looks:
        t = mean[:, nk - 1] / np.sqrt(var[:, nk - 1] / nk)
        target = obrien_fleming_spent(nk / looks[-1], alpha) - spent
        vals = np.where(alive, t, -np.inf)
        c = float(np.quantile(vals, 1 - target)) if target > 0 else math.inf
        bounds.append(c)
        spent += float(np.mean(vals > c))
        alive &= ~(t > c)
    return tuple(bounds)


def tail_of(crit: float, df: float) -> float:
    """P(T_df > crit): a boundary as a nominal p-value (to apply a t boundary to a statistic with other df)."""
    return float(stats.t.sf(crit, df))


def paired_test(base: Sequence[float], cand: Sequence[float], higher_is_better: bool, alpha: float = 0.05) -> dict:
    """One-sided paired t-test that `cand` beats `base` (paired by index, i.e. by seed); margin 0."""
    if len(base) != len(cand):
        raise ValueError(f"paired test needs equal lengths, got {len(base)} and {len(cand)}")
    sign = 1.0 if higher_is_better else -1.0
    return margin_test([sign * (c - b) for b, c in zip(base, cand)], 0.0, alpha)
