"""Task definitions, data files and the end-to-end path: strict YAML, did-you-mean, missing data naming the
expected path and format, every reader format, real reference data (GSM8K extraction, MMLU oracle/uniform,
HH-RLHF pairs), and `python -m foundry.eval` on a saved run with item-by-item comparison."""
from __future__ import annotations

import gzip
import json
import random

import pytest
import torch
import yaml

from conftest import shared_file
from foundry.eval import evaluate, get_task, task_names
from foundry.eval.__main__ import main as eval_main
from foundry.eval.data import ENV_VAR, read_records
from foundry.eval.spec import TaskError, load_task_dir, parse_spec


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# -- definitions --------------------------------------------------------------------------------------
def test_builtin_tasks_load_and_cover_every_kind():
    from foundry.eval.runners import RUNNERS, import_builtin_runners

    import_builtin_runners()
    names = task_names()
    for n in ("gsm8k", "gsm8k_cot", "mmlu", "mmlu_text", "humaneval", "hh_rlhf", "principles", "probe_mqar",
              "probe_copy", "probe_arithmetic"):
        assert n in names
    kinds = {get_task(n).kind for n in names}
    assert kinds == set(RUNNERS.names()), "every runner has a task and every task a runner"
    for n in names:
        s = get_task(n)
        assert s.version >= 1 and 0 <= s.chance <= 1 and s.metric


def test_strict_task_yaml(tmp_path):
    good = {"name": "t", "version": 1, "kind": "mmlu", "description": "d", "metric": "acc"}
    with pytest.raises(TaskError, match="did you mean 'num_fewshot'"):
        parse_spec({**good, "num_fewshots": 3}, "x.yaml")
    with pytest.raises(TaskError, match="missing required key 'version'"):
        parse_spec({k: v for k, v in good.items() if k != "version"}, "x.yaml")
    with pytest.raises(TaskError, match="num_fewshot=6"):
        parse_spec({**good, "num_fewshot": 6, "max_fewshot": 5}, "x.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(good))
    with pytest.raises(TaskError, match="defined twice"):
        load_task_dir(tmp_path)


def test_unknown_options_fail_with_a_suggestion_before_any_work():
    from foundry.config import ModelConfig
    from foundry.eval.runners import RUNNERS, check_options, import_builtin_runners

    import_builtin_runners()
    for n in task_names():  # every built-in task's own options are valid
        check_options(get_task(n), RUNNERS.get(get_task(n).kind), {})
    with pytest.raises(TaskError, match="did you mean 'score'"):
        evaluate("no/such/run", ["mmlu"], options={"mmlu": {"scor": "letter"}})
    with pytest.raises(TaskError, match="did you mean 'n_pairs'"):
        evaluate(ModelConfig(), ["probe_mqar"], options={"probe_mqar": {"n_pair": 3}})


def test_mmlu_limit_covers_every_subject():
    from foundry.eval.mmlu import interleave_subjects

    recs = [{"subject": s, "i": i} for s in ("b", "a", "c") for i in range(3)] + [{"subject": "a", "i": 3}]
    order = interleave_subjects(recs)
    assert [r["subject"] for _, r in order[:3]] == ["a", "b", "c"]
    assert sorted(i for i, _ in order) == list(range(len(recs)))
    assert [r["i"] for _, r in order if r["subject"] == "a"] == [0, 1, 2, 3]


def test_unknown_task_suggests_before_any_work():
    with pytest.raises(TaskError, match="did you mean 'mmlu'"):
        evaluate("no/such/run", ["mmlu", "mmmlu"])


def test_missing_data_names_path_and_format(tmp_path, monkeypatch, capsys):
    from eval_helpers import tiny_char_model

    model, tok = tiny_char_model()
    with pytest.raises(TaskError) as e:
        evaluate((model, tok), ["mmlu"], data_dir=tmp_path, out_dir=tmp_path / "o")
    msg = str(e.value)
    assert str(tmp_path / "mmlu" / "mmlu_test.jsonl") in msg and '"choices": [4 str]' in msg and "--data-dir" in msg
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(TaskError, match="elsewhere"):
        evaluate((model, tok), ["gsm8k_cot"], out_dir=tmp_path / "o")


def test_humaneval_needs_explicit_opt_in():
    with pytest.raises(TaskError, match="--allow-code-execution"):
        evaluate("no/such/run", ["humaneval"])


def test_readers_all_formats(tmp_path):
    recs = [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": "#### 2"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "a.json").write_text(json.dumps(recs))
    for name in ("a.jsonl", "a.jsonl.gz", "a.json"):
        assert read_records(tmp_path / name) == recs
    csvdir = tmp_path / "test"
    csvdir.mkdir()
    (csvdir / "abstract_algebra_test.csv").write_text('"What, is it?",a,b,c,d,C\n')
    assert read_records(csvdir) == [{"question": "What, is it?", "subject": "abstract_algebra",
                                     "choices": ["a", "b", "c", "d"], "answer": 2}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(TaskError, match="bad.jsonl:2"):
        read_records(tmp_path / "bad.jsonl")


# -- real reference data ------------------------------------------------------------------------------
def test_gsm8k_extraction_on_gold_answers():
    from foundry.eval.gsm8k import extract_flexible, extract_strict, gold_answer

    recs = read_records(shared_file("gsm8k/test.jsonl"))
    assert len(recs) == 1319
    assert sum(extract_strict(r["answer"]) == gold_answer(r["answer"]) for r in recs) == 1319
    assert sum(extract_flexible(r["answer"]) == gold_answer(r["answer"]) for r in recs) == 1319
    assert sum("," in r["answer"].split("####")[-1] for r in recs) == 14   # the thousands separators were stripped
    assert extract_strict("so 3 + 4 = 7. The answer is $1,200.") == "1200"
    assert extract_flexible("it costs $5.50 then 12 more, total 17.") == "17"
    assert extract_strict("no number here") is None and extract_flexible("none") is None


def test_mmlu_oracle_100_uniform_25():
    from foundry.eval.mmlu import credit, summarize

    recs = read_records(shared_file("mmlu/mmlu_test.jsonl"))
    assert len(recs) == 14042 and len({r["subject"] for r in recs}) == 57
    spec = get_task("mmlu")
    rng = random.Random(0)
    for scorer, expect in ((lambda r: [float(i == r["answer"]) for i in range(4)], 1.0),
                           (lambda r: [0.0] * 4, 0.25),
                           (lambda r: [rng.random() for _ in range(4)], None)):
        rows = [{"correct": credit(scorer(r), r["answer"])} for r in recs]
        s = summarize(spec, rows, [r["subject"] for r in recs])
        if expect is None:
            assert abs(s["score"] - 0.25) < 0.015        # a random scorer sits at chance
        else:
            assert s["score"] == pytest.approx(expect) and s["macro"] == pytest.approx(expect)
            assert all(v == pytest.approx(expect) for v in s["per_subject"].values())


def test_hh_rlhf_pairs_split_at_last_shared_assistant_turn():
    from foundry.eval.constitution import split_pair

    recs = read_records(shared_file("hh-rlhf/harmless-base_test.jsonl.gz"))
    assert len(recs) == 2312
    split = [split_pair(r["chosen"], r["rejected"]) for r in recs]
    ok = [s for s in split if s is not None]
    assert len(ok) > 2200
    for (ctx, a, b), r in zip(split, recs):
        if ctx is None:
            continue
        assert ctx.endswith("\n\nAssistant:") and ctx + a == r["chosen"] and ctx + b == r["rejected"]
        assert "\n\nHuman:" not in a[:1] and a != b


def test_evaluate_on_real_data_small(tmp_path):
    from eval_helpers import tiny_char_model

    data = shared_file("mmlu/mmlu_test.jsonl").parents[1]
    model, tok = tiny_char_model(extra="0123456789()+-*/=%$")
    res = evaluate((model, tok), ["mmlu", "gsm8k_cot", "hh_rlhf", "principles"], limit=8, data_dir=data,
                   out_dir=tmp_path, num_fewshot=1, batch_size=8)
    for name, s in res.items():
        assert {"metric", "score", "chance", "n", "items_path"} <= set(s)
        rows = [json.loads(l) for l in open(s["items_path"])]
        assert len(rows) == s["n"] and len({r["id"] for r in rows}) == len(rows)
    assert res["principles"]["n_unencodable"] == 0          # the principles are written in the char alphabet
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == set(res)


# -- CLI on a saved run -------------------------------------------------------------------------------
def test_cli_on_saved_run_and_compare(tmp_path, capsys):
    from eval_helpers import save_run, tiny_char_model

    runs = []
    for seed in (0, 1):
        model, tok = tiny_char_model(seed=seed)
        runs.append(save_run(tmp_path / f"run{seed}", model, tok))
    for r in runs:
        assert eval_main([str(r), "--tasks", "principles", "--option", "principles.normalize=sum"]) == 0
    out = capsys.readouterr().out
    assert "principles (v2): acc = " in out and "chance 0.5000" in out
    a, b = (r / "eval" / "principles.jsonl" for r in runs)
    assert eval_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "McNemar" in out and "paired bootstrap" in out
    assert eval_main(["compare", str(a), str(tmp_path / "missing.jsonl")]) == 2
    assert eval_main(["--list"]) == 0 and "probe_mqar" in capsys.readouterr().out
    assert eval_main([str(runs[0]), "--tasks", "mmlux"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "nope"), "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err  # neither a run nor a checkpoint the zoo finds: what a checkpoint holds
    assert "not a run or checkpoint directory" in err and "expected config.json" in err


def test_umbrella_command_reaches_eval(capsys):
    from foundry.cli.main import main as foundry_main

    assert foundry_main(["eval", "--list"]) == 0
    assert "gsm8k_cot" in capsys.readouterr().out
