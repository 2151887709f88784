"""Paired statistics across seeds (torch-free, no SciPy): is a mutant's win bigger than seed noise?

    paired_test(base=[2.10, 2.12, 2.08], cand=[2.01, 2.05, 2.00], higher_is_better=False)
    -> {"n": 3, "diffs": [...], "mean": 0.08, "sd": ..., "se": ..., "t": ..., "df": 2, "p": ...}

The difference is taken so that positive means the candidate is better. The test is the one-sided paired
Student t-test (Student 1908): t = mean(d) / (sd(d) / sqrt(n)), p = P(T_{n-1} >= t). Pairing by seed removes
the shared noise of initialisation and data order, which is most of the run-to-run variance of small models.
"""
from __future__ import annotations

import math
from typing import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_sf; q in (0, 1))."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_test(base: Sequence[float], cand: Sequence[float], higher_is_better: bool,
                alpha: float = 0.05) -> dict:
    """One-sided paired t-test that `cand` beats `base` (paired by index, i.e. by seed)."""
    if len(base) != len(cand):
        raise ValueError(f"paired test needs equal lengths, got {len(base)} and {len(cand)}")
    n = len(base)
    diffs = [(c - b) if higher_is_better else (b - c) for b, c in zip(base, cand)]
    out = {"n": n, "diffs": diffs, "mean": sum(diffs) / n if n else float("nan"), "alpha": alpha}
    if n < 2:
        out.update(sd=float("nan"), se=float("nan"), t=float("nan"), df=0, p=float("nan"), t_crit=float("nan"))
        return out
    mean = out["mean"]
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:
        t = math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0)
    else:
        t = mean / se
    df = n - 1
    p = t_sf(t, df) if t != 0.0 or se else 0.5
    out.update(sd=sd, se=se, t=t, df=df, p=p, t_crit=t_ppf(1 - alpha, df))
    return out
