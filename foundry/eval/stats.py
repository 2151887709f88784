"""Statistics for scores and for comparing two models item by item (torch-free).

    wilson_interval(k, n)            95% score interval of a proportion (Wilson 1927); sane at 0 and n
    pass_at_k(n, c, k)               unbiased pass@k of Chen et al. 2021 (HumanEval paper, eq. 1)
    mcnemar(a, b)                    exact two-sided McNemar test on paired right/wrong outcomes
    paired_bootstrap(a, b)           bootstrap of the mean difference of paired per-item scores
    compare_items(rows_a, rows_b)    join two per-item JSONL result sets by id and run both tests
"""
from __future__ import annotations

import math
import random
from typing import Sequence


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k} n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)   # exact ends: rounding must not exclude them


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes:
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test: only the discordant pairs (a right and b wrong, or the reverse) carry information."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have equal lengths, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p_value": _binom_two_sided(a_only, a_only + b_only)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a - b with a 95% percentile interval, and the fraction of resamples where b >= a (a one-sided
    p-value for "a is better")."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores must be non-empty with equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n, rng = len(d), random.Random(seed)
    means = sorted(sum(rng.choices(d, k=n)) / n for _ in range(n_boot))
    return {"mean_diff": sum(d) / n, "ci95": (means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]),
            "p_b_ge_a": sum(1 for m in means if m <= 0) / n_boot}


def compare_items(rows_a: list[dict], rows_b: list[dict], key: str = "correct") -> dict:
    """Join two per-item result lists on `id` and compare them (McNemar for booleans, plus paired bootstrap)."""
    by_b = {r["id"]: r for r in rows_b}
    common = [r["id"] for r in rows_a if r["id"] in by_b]
    if not common:
        raise ValueError("the two result files share no item ids; were they made on the same task and data?")
    by_a = {r["id"]: r for r in rows_a}
    a = [float(by_a[i][key]) for i in common]
    b = [float(by_b[i][key]) for i in common]
    out = {"n": len(common), "only_in_a": len(rows_a) - len(common), "only_in_b": len(rows_b) - len(common),
           "score_a": sum(a) / len(a), "score_b": sum(b) / len(b), "bootstrap": paired_bootstrap(a, b)}
    if all(x in (0.0, 1.0) for x in a + b):
        out["mcnemar"] = mcnemar([x == 1.0 for x in a], [x == 1.0 for x in b])
    return out
