"""The power of the whole promotion rule: the smallest planted gain it promotes with a given probability.

    sizes = detectable(rule, mu=margin / sd, margin_df=44, powers=(0.8, 0.9))   # in units of sd

One mutant better than the baseline by `delta` is promoted only if it (1) survives every halving rung, (2) wins
the screening among the other K - 1 mutants, (3) gains more than the margin on the screening seeds (the gate to
confirmation) and (4) passes the confirmation test on fresh seeds at one of its looks before a futility stop.
A power figure for step 4 alone (a noncentral t) over-promises by the chance of losing steps 1-3: at K = 10
mutants on 5 seeds its "90%" size was promoted in 88% of simulated sweeps. So the size is derived for the rule
as a whole, under a stated model, by a seeded Monte Carlo (a report's numbers are reproducible).

Model, in units of sd, the standard deviation of one seed's paired gain: the K - 1 other mutants are no better
than the baseline (gain 0: the reference for "detectable"); on screening seed s mutant j's paired gain is
delta_j + (a_s - b_js) / sqrt(2) with a (the baseline's run) and b standard normal, so the gains of two mutants
are correlated 1/2 through the shared baseline, as in Dunnett's (1955) comparisons with a control. The margin is
mu (fixed with --min-effect) or mu * sqrt(chi2_df / df) (the pooled seed-to-seed SD, estimated on margin_df
degrees of freedom). A halving rung ranks the mutants by their mean gain plus independent noise of sqrt(3) per
seed, i.e. with twice the final budget's per-seed SD (an assumption: a rung's ranking is noisier than the final
one; a gain that appears only late in training can be pruned and is not covered). Confirmation seeds: the
selected mutant's paired gains are delta + N(0, 1).

Every step is monotone in delta, so a draw promotes the planted mutant exactly when delta exceeds that draw's
threshold, and the size with power p is the p-quantile of the thresholds. With fixed screening each threshold
is closed form; adaptive screening (decision.screen_open) is emulated draw by draw and its threshold bisected.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

DRAWS = 8000
RUNG_NOISE = math.sqrt(3.0)   # a rung's extra per-seed noise, in units of the final per-seed SD


def detectable(rule, mu: float, margin_df: int = 0, powers=(0.8, 0.9), draws: int = DRAWS,
               seed: int = 20261) -> dict[float, float]:
    """{power: the planted gain (in units of sd) promoted with that probability} under the model above."""
    if not math.isfinite(mu):
        return {p: math.nan for p in powers}
    rng = np.random.default_rng(seed)
    K, S, C = max(1, rule.mutants), rule.screen_seeds, rule.confirm_seeds
    if S < 2:
        return {p: math.nan for p in powers}
    m_hat = np.full(draws, mu) if not margin_df else mu * np.sqrt(rng.chisquare(margin_df, draws) / margin_df)
    g = (rng.standard_normal((draws, 1, S)) - rng.standard_normal((draws, K, S))) / math.sqrt(2)
    rung = rng.standard_normal((draws, len(rule.keep), K)) * RUNG_NOISE / math.sqrt(S)
    z = rng.standard_normal((draws, C))
    alive, survive = _halving(g.mean(-1), rung, rule.keep)
    best_other = np.where(alive[:, 1:], g[:, 1:].mean(-1), -np.inf).max(1, initial=-np.inf)
    screen = np.maximum(best_other, m_hat) - g[:, 0].mean(-1)      # fixed screening: closed form
    if rule.adaptive:
        screen = _adaptive_threshold(g, alive, m_hat, S, screen)
    need = np.maximum(np.maximum(survive, screen), _confirm_threshold(z, m_hat, rule.looks(), rule.bounds()))
    return {p: float(np.quantile(need, p)) for p in powers}


def _halving(mean: np.ndarray, rung: np.ndarray, keep: tuple[int, ...]):
    """The other mutants still in the race if the planted one (index 0) survives every rung, and the gain it
    needs to survive them all. A planted mutant that survives takes one of the `keep` places, so the others
    kept with it are the best keep - 1 of them."""
    N, K = mean.shape
    alive = np.ones((N, K), dtype=bool)
    need = np.full(N, -np.inf)
    for r, k in enumerate(keep):
        score = np.where(alive[:, 1:], mean[:, 1:] + rung[:, r, 1:], -np.inf)
        order = np.sort(score, axis=1)[:, ::-1]                       # the others, best first
        if k <= K - 1:  # it survives if fewer than k others score above it
            need = np.maximum(need, order[:, k - 1] - (mean[:, 0] + rung[:, r, 0]))
        cut = order[:, k - 2][:, None] if k >= 2 else np.full((N, 1), np.inf)
        alive[:, 1:] &= score >= cut
    return alive, need


def _confirm_threshold(z: np.ndarray, m_hat: np.ndarray, looks, bounds) -> np.ndarray:
    """Per draw, the gain at which the confirmation promotes: at look k, t = (delta + mean_k - m) / se_k must
    exceed bound_k, and every earlier look must have had delta + mean_j > m (no futility stop)."""
    need, before = np.full(len(z), np.inf), np.full(len(z), -np.inf)
    for k, (n, c) in enumerate(zip(looks, bounds)):
        mean, sd = z[:, :n].mean(1), z[:, :n].std(1, ddof=1)
        need = np.minimum(need, np.maximum(before, m_hat - mean + c * sd / math.sqrt(n)))
        before = np.maximum(before, m_hat - mean)
    return need


def _adaptive_threshold(g: np.ndarray, alive: np.ndarray, m_hat: np.ndarray, S: int, fixed: np.ndarray,
                        steps: int = 16):
    """Adaptive screening: per draw, the smallest planted gain with which it is selected and passes the gate,
    by bisection (the screening is re-run for every draw at its own trial gain) from a bracket of 8 around the
    fixed design's threshold `fixed` (the same draw on all S seeds); 8 / 2^16 is far below the Monte Carlo error."""
    from foundry.sweep.decision import MIN_SCREEN
    n = np.arange(1, S + 1)
    mean = np.cumsum(g, -1) / n                                       # (N, K, S): mean over the first n seeds
    var = (np.cumsum(g * g, -1) - n * mean ** 2) / np.maximum(n - 1, 1)
    half = stats.t.ppf(0.9, np.maximum(n - 1, 1)) * np.sqrt(np.maximum(var, 0) / n)  # 80% two-sided
    lo, hi = fixed - 4.0, fixed + 4.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = _adaptive_pass(mean, half, alive, m_hat, mid, min(MIN_SCREEN, S), S)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def _adaptive_pass(mean, half, alive, m_hat, delta, start: int, S: int) -> np.ndarray:
    """decision.screen_open one seed at a time for every draw, the planted mutant (index 0) gaining delta;
    True where it ends selected with a screening gain above the margin."""
    N, K, _ = mean.shape
    shift = np.zeros((N, K))
    shift[:, 0] = delta
    n = np.where(alive, start, 1)
    while True:
        m = np.take_along_axis(mean, (n - 1)[..., None], axis=2)[..., 0] + shift
        h = np.take_along_axis(half, (n - 1)[..., None], axis=2)[..., 0]
        m_live = np.where(alive, m, -np.inf)
        lead = m_live.argmax(1)
        is_lead = np.arange(K)[None] == lead[:, None]
        lead_lo = (m - h)[np.arange(N), lead]
        others_hi = np.where(is_lead | ~alive, -np.inf, m + h).max(1, initial=-np.inf)
        done = (lead_lo > others_hi) & (lead_lo > m_hat)
        opn = (alive & (n < S) & ~done[:, None]
               & (is_lead | ((m + h >= m_hat[:, None]) & (m + h >= lead_lo[:, None]))))
        if not opn.any():
            return (lead == 0) & (m_live[:, 0] > m_hat)
        n = n + opn
