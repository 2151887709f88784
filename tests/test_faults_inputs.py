"""Fault injection on what the commands read: a damaged metrics.jsonl line, a run directory missing its
tokenizer.json or config.yaml (read by eval, compare, generate and the sweep), a checkpoint missing its
config.yaml, a prepared data set with a truncated .bin. Each is named with the file and what to do, never a
traceback, and doing what the message says (or re-running the same command) works."""
import re
import shlex
import shutil

import pytest

from faults_helpers import RUN, assert_same_run, copy_run, run_config
from foundry.checkpoint import load_run
from foundry.safeio import read_jsonl
from foundry.cli.compare import main as compare_main
from foundry.train import main as train_main
from foundry.train import train
from train_helpers import tiny_overrides


def _argv(tmp_path, data, run):
    exp = tmp_path / "exp.yaml"
    exp.write_text("base_model: v1\n")
    return [str(exp), "--quiet", "--no-store", *tiny_overrides(data, run, **RUN)]


def test_damaged_metrics_line_is_named_by_every_reader_and_rewritten_by_the_next_run(faults_reference, tmp_path, capsys):
    from foundry.sweep.plan import read_metrics as sweep_read_metrics

    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[50] = lines[50][: len(lines[50]) // 2] + "\n"       # a line cut short in the middle of the file
    path.write_text("".join(lines))

    assert compare_main([str(ref), str(run), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: line 51 is not a JSON object (the file is damaged); skipped" in err
    assert "Re-running the command that trained the run continues it" in err
    assert len(sweep_read_metrics(path)) == len(lines) - 1      # the sweep's reader (the same one) skips it,
    assert capsys.readouterr().err == ""                        # and its progress polls do not repeat the warning

    for d in ("ckpt_last", "ckpt_best"):                        # continue from before the damaged line:
        shutil.rmtree(run / d)                                  # ckpt_last.prev1 (iteration 40)
    train(run_config(data, run), quiet=True)
    assert len(read_jsonl(path, warn=pytest.fail)) == path.read_text().count("\n")  # the damaged line is gone
    assert_same_run(ref, run, after=40)


def test_run_missing_its_tokenizer_is_named_and_the_training_command_restores_it(faults_reference, tmp_path, capsys):
    from foundry.eval.__main__ import main as eval_main

    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    (run / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_run(run)                                           # eval, generate and the sweep's evaluation
    assert f"{run / 'tokenizer.json'} is missing" in str(e.value) and "re-run the run's training command" in str(e.value)
    assert eval_main([str(run), "--tasks", "principles", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run / 'tokenizer.json'} is missing" in err
    assert train_main(_argv(tmp_path, data, run)) == 0            # the same training command: a finished run, continued
    assert load_run(run).tokenizer.encode("ROMEO") == load_run(ref).tokenizer.encode("ROMEO")


def test_run_missing_its_config_is_named_with_the_copy_to_restore(faults_reference, tmp_path, capsys):
    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    (run / "config.yaml").unlink()
    assert compare_main([str(ref), str(run), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'config.yaml'} is missing" in err
    cp = re.search(r"`(cp [^`]+)`", err).group(1).split()
    shutil.copy(cp[1], cp[2])                                    # what the message says
    assert compare_main([str(ref), str(run), "--no-plot"]) == 0


def test_checkpoint_missing_its_config_is_refused_by_eval_naming_the_intact_one(faults_reference, tmp_path, capsys):
    from foundry.eval.__main__ import main as eval_main

    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    (run / "ckpt_best" / "config.yaml").unlink()
    assert eval_main([str(run), "--tasks", "principles", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{run / 'ckpt_best'}: config.yaml is missing" in err and str(run / "ckpt_last") in err
    assert eval_main([str(run / "ckpt_last"), "--tasks", "principles", "--limit", "2"]) == 0


@pytest.mark.parametrize("cut", ["odd_bytes", "whole_tokens"])
def test_truncated_prepared_bin_is_named_with_the_command_that_rebuilds_it(tmp_path, cut, capsys):
    from foundry.data.__main__ import main as data_main
    from foundry.data.embedded import load_text

    src = tmp_path / "corpus.txt"
    src.write_text(load_text()[:40_000])
    prepared = tmp_path / "prepared"
    assert data_main(["prepare", "--input", str(src), "--tokenizer", "char", "--out", str(prepared),
                      "--workers", "1"]) == 0
    f = prepared / "train.bin"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2 + (1 if cut == "odd_bytes" else 0)])
    capsys.readouterr()

    argv = _argv(tmp_path, prepared, tmp_path / "run")
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"data.path {prepared}: train.bin is {size // 2 + (cut == 'odd_bytes'):,} bytes but meta.json says" in err
    assert "truncated or damaged" in err
    command = re.search(r"`python -m foundry\.data (prepare [^`]+)`", err).group(1)
    assert data_main(shlex.split(command) + ["--workers", "1"]) == 0   # the command it names rebuilds the set
    assert train_main(argv) == 0
