"""HumanEval against the real problems: all 164 canonical solutions pass, known-wrong completions fail, the
`score humaneval` command judges OpenAI-format samples, pass@k equals its combinatorial definition."""
from __future__ import annotations

import itertools
import json
import math
import time

import pytest
import torch

from conftest import shared_file
from foundry.eval.__main__ import main as eval_main
from foundry.eval.humaneval import check_completions, load_problems, pass_at_ks
from foundry.eval.spec import get_task
from foundry.eval.stats import pass_at_k


@pytest.fixture(scope="module")
def problems():
    data = shared_file("humaneval/HumanEval.jsonl.gz").parents[1]
    return load_problems(get_task("humaneval"), data), data


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    probs, _ = problems
    assert len(probs) == 164
    good = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in probs.items()]
    t0 = time.perf_counter()
    res = check_completions(probs, good, workers=2)
    seconds = time.perf_counter() - t0
    failed = [(r["task_id"], r["result"]) for r in res if not r["passed"]]
    assert not failed, failed[:3]
    # the benchmark (bench/bench_eval.py) holds the 15 s bound on 2 idle cores; here, on a shared machine,
    # only guard against a gross regression
    assert seconds < 90, f"164 canonical solutions took {seconds:.1f} s"
    # known-wrong: an empty body, and each canonical solution paired with another problem's tests
    ids = sorted(probs)
    wrong = [{"task_id": t, "completion": "    return None\n"} for t in ids[:40]]
    wrong += [{"task_id": t, "completion": probs[ids[(i + 1) % len(ids)]]["canonical_solution"]}
              for i, t in enumerate(ids[40:80], start=40)]
    res = check_completions(probs, wrong, workers=2)
    assert not any(r["passed"] for r in res), [r["task_id"] for r in res if r["passed"]]


def test_score_command_on_openai_samples(problems, tmp_path, capsys):
    probs, data = problems
    ids = sorted(probs)[:3]
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for t in ids:  # two samples per task: canonical (right) and an empty body (wrong)
            f.write(json.dumps({"task_id": t, "completion": probs[t]["canonical_solution"]}) + "\n")
            f.write(json.dumps({"task_id": t, "completion": "    pass\n"}) + "\n")
    assert eval_main(["score", "humaneval", str(samples), "--data-dir", str(data), "--k", "1,2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == {"pass@1": 0.5, "pass@2": 1.0}
    rows = [json.loads(l) for l in open(tmp_path / "samples.jsonl_results.jsonl")]
    assert [r["passed"] for r in rows] == [True, False] * 3 and all("result" in r for r in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "x"}) + "\n")
    assert eval_main(["score", "humaneval", str(bad), "--data-dir", str(data)]) == 2
    assert "lacks 'task_id'" in capsys.readouterr().err
    assert eval_main(["score", "humaneval", str(tmp_path / "missing.jsonl")]) == 2


def test_pass_at_k_matches_its_definition():
    # brute force: the fraction of k-subsets of n samples that contain at least one correct one
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 2), (6, 3, 4), (10, 1, 10), (7, 7, 3)]:
        subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    rows = [{"task_id": "a", "passed": True}, {"task_id": "a", "passed": False}, {"task_id": "b", "passed": False},
            {"task_id": "b", "passed": False}]
    assert pass_at_ks(rows, (1, 2, 10)) == {"pass@1": 0.25, "pass@2": 0.5}


def test_humaneval_task_end_to_end(problems, tmp_path):
    from eval_helpers import tiny_char_model
    from foundry.eval import evaluate

    torch.set_num_threads(1)
    _, data = problems
    model, tok = tiny_char_model(extra="0123456789()[]{}<>=+-*/%_\"#@|\\^~`", block_size=128)
    res = evaluate((model, tok), ["humaneval"], limit=3, data_dir=data, out_dir=tmp_path, allow_code_execution=True,
                   options={"humaneval": {"timeout": 2.0}})
    s = res["humaneval"]
    assert s["metric"] == "pass@1" and s["n"] == 3 and s["chance"] == 0.0 and s["score"] == 0.0  # random model
    rows = [json.loads(l) for l in open(s["items_path"])]
    assert len(rows) == 3 and all("completion" in r and "result" in r for r in rows)


def test_score_lists_the_walls_and_warns_when_only_the_guard_held(problems, tmp_path, capsys):
    probs, data = problems
    t = sorted(probs)[0]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": t, "completion": probs[t]["canonical_solution"]}) + "\n")
    assert eval_main(["score", "humaneval", str(samples), "--data-dir", str(data), "--k", "1"]) == 0
    rows = [json.loads(l) for l in open(tmp_path / "samples.jsonl_results.jsonl")]
    assert "guard" in rows[0]["walls"]
    kernel_walls = any(w.startswith("landlock") or w == "mountns" for w in rows[0]["walls"])
    assert ("only the Python guard" in capsys.readouterr().err) == (not kernel_walls)
    # a kernel/user with no Landlock and no namespaces: the run says so in one line
    import foundry.eval.humaneval as he
    from foundry.eval.sandbox import Limits
    bare = Limits(landlock=False, mount_namespace=False, network_namespace=False)
    passk, out = he.score_samples(samples, data_dir=data, ks=(1,), limits=bare, log=print)
    assert passk == {"pass@1": 1.0}
    err = capsys.readouterr().out
    assert err.count("\n") == 1 and "warning: sandbox: 1 of 1 programs ran with only the Python guard" in err
    assert [json.loads(l)["walls"] for l in open(out)] == [["guard"]]
