"""Statistics against brute force and known values: Wilson interval, exact McNemar, paired bootstrap,
item-by-item comparison of two result files."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from foundry.eval.stats import compare_items, mcnemar, paired_bootstrap, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # coverage: a true p of 0.3 falls inside the interval about 95% of the time
    rng = random.Random(0)
    hits = sum(lo <= 0.3 <= hi for lo, hi in
               (wilson_interval(sum(rng.random() < 0.3 for _ in range(60)), 60) for _ in range(2000)))
    assert 0.92 < hits / 2000 < 0.98


def test_mcnemar_exact_matches_enumeration():
    a = [True] * 7 + [False] * 2 + [True] * 5 + [False] * 6
    b = [False] * 7 + [True] * 2 + [True] * 5 + [False] * 6
    r = mcnemar(a, b)
    assert (r["a_only"], r["b_only"]) == (7, 2)
    # two-sided exact binomial by enumeration over 9 discordant fair coin flips
    n = 9
    p_obs = math.comb(n, 2) / 2 ** n
    p = sum(math.comb(n, k) / 2 ** n for k in range(n + 1) if math.comb(n, k) / 2 ** n <= p_obs + 1e-12)
    assert r["p_value"] == pytest.approx(p)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = random.Random(1)
    b = [float(rng.random() < 0.5) for _ in range(400)]
    a = [1.0 if x == 1.0 or rng.random() < 0.3 else 0.0 for x in b]     # a is b plus ~15% more right
    r = paired_bootstrap(a, b)
    assert r["mean_diff"] > 0.1 and r["ci95"][0] > 0 and r["p_b_ge_a"] < 0.01
    r = paired_bootstrap(b, b)
    assert r["mean_diff"] == 0 and r["ci95"] == (0.0, 0.0)


def test_compare_items_joins_by_id():
    rows_a = [{"id": f"t/{i}", "correct": i % 2 == 0} for i in range(10)]
    rows_b = [{"id": f"t/{i}", "correct": True} for i in range(2, 12)]
    r = compare_items(rows_a, rows_b)
    assert r["n"] == 8 and r["only_in_a"] == 2 and r["only_in_b"] == 2
    assert r["mcnemar"]["b_only"] == 4 and r["mcnemar"]["a_only"] == 0
    with pytest.raises(ValueError, match="share no item ids"):
        compare_items(rows_a, [{"id": "other", "correct": True}])


def test_parquet_reader_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from foundry.eval.data import read_records

    recs = [{"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 3}]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "test-00000-of-00001.parquet")
    assert read_records(tmp_path / "test-00000-of-00001.parquet") == recs
