"""Fault injection: a full disk during each kind of write (a checkpoint, a metrics line, a prepared data set,
an eval result), simulated with a file-size limit (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk)
and, where this process may mount one, a small tmpfs (a real ENOSPC). Each time the error names the path and
the space needed, what was intact before stays intact, and the same command continues once there is room."""
import hashlib
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

import foundry.checkpoint as ckpt_mod
from faults_helpers import assert_same_run, file_size_limit, no_temporary_left, run_config
from foundry.checkpoint import inspect_checkpoint, save_checkpoint
from foundry.data.embedded import load_text
from foundry.safeio import DiskFullError, LineLog, read_jsonl
from foundry.train import train


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_checkpoint_on_a_full_disk_keeps_the_previous_one_and_the_run_continues(faults_reference, tmp_path, monkeypatch):
    data, ref = faults_reference
    run = tmp_path / "run"
    real, calls = ckpt_mod.save_checkpoint, []

    def second_checkpoint_hits_the_limit(*a, **k):  # the checkpoint at iteration 40 does not fit
        calls.append(1)
        if len(calls) < 2:
            return real(*a, **k)
        with file_size_limit(50_000):  # the weights file alone is ~115 KB
            return real(*a, **k)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", second_checkpoint_hits_the_limit)
    with pytest.raises(DiskFullError) as e:
        train(run_config(data, run), quiet=True)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'ckpt_last'}: the file-size limit") and "needs about" in msg and " KB" in msg
    assert "run the same command again" in msg and f"The previous checkpoint {run / 'ckpt_last'} is intact" in msg
    info = inspect_checkpoint(run / "ckpt_last")
    assert info.intact and info.iter == 20
    assert no_temporary_left(run) == []

    monkeypatch.undo()  # space freed: the same command continues from iteration 20
    train(run_config(data, run), quiet=True)
    assert_same_run(ref, run, after=20)


def test_metrics_line_on_a_full_disk_is_cut_back_and_the_run_continues(faults_reference, tmp_path, monkeypatch):
    data, ref = faults_reference
    run = tmp_path / "run"
    real, held = ckpt_mod.copy_checkpoint, []

    def fill_the_disk_after_the_first_checkpoint(*a, **k):  # its last write: ckpt_last copied to ckpt_best
        real(*a, **k)
        if not held:  # room for one or two more metric lines, not for the next checkpoint
            held.append(file_size_limit((run / "metrics.jsonl").stat().st_size + 300))
            held[0].__enter__()

    monkeypatch.setattr(ckpt_mod, "copy_checkpoint", fill_the_disk_after_the_first_checkpoint)
    try:
        with pytest.raises(DiskFullError) as e:
            train(run_config(data, run), quiet=True)
    finally:
        for cm in held:
            cm.__exit__(None, None, None)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'metrics.jsonl'}: the file-size limit") and "ends on its last whole line" in msg
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(read_jsonl(run / "metrics.jsonl", warn=pytest.fail)) == text.count("\n")
    assert inspect_checkpoint(run / "ckpt_last").iter == 20

    monkeypatch.undo()
    train(run_config(data, run), quiet=True)
    assert_same_run(ref, run, after=20)


def test_prepared_data_set_on_a_full_disk_leaves_the_existing_one(tmp_path):
    from foundry.data.prepare import prepare

    text = load_text()
    (tmp_path / "a.txt").write_text(text[:50_000])
    (tmp_path / "b.txt").write_text(text[:400_000])
    out = tmp_path / "prepared"
    prepare([tmp_path / "a.txt"], "char", out, workers=1, log=lambda *a: None)
    before = _digest(out)
    with file_size_limit(200_000), pytest.raises(DiskFullError) as e:  # train.bin needs ~720 KB
        prepare([tmp_path / "b.txt"], "char", out, workers=1, overwrite=True, log=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith(f"{out}: the file-size limit of 200.0 KB")
    assert 800 <= float(re.search(r"needs about ([\d.]+) KB", msg).group(1)) < 900  # 400,000 uint16 + document starts
    assert f"The existing {out} is unchanged" in msg
    assert _digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "prepared"]
    meta = prepare([tmp_path / "b.txt"], "char", out, workers=1, overwrite=True, log=lambda *a: None)  # room again
    assert meta["train_tokens"] + meta["val_tokens"] == 400_000


def test_eval_results_on_a_full_disk_keep_the_previous_ones(tmp_path):
    from eval_helpers import save_run, tiny_char_model
    from foundry.eval import evaluate

    run = save_run(tmp_path / "run", *tiny_char_model())
    evaluate(run, ["principles"], limit=4)
    before = _digest(run / "eval")
    with file_size_limit(64), pytest.raises(DiskFullError) as e:
        evaluate(run, ["principles"], limit=8)
    assert str(e.value).startswith(f"{run / 'eval' / 'principles.jsonl'}: the file-size limit")
    assert "The previous principles.jsonl is unchanged" in str(e.value)
    assert _digest(run / "eval") == before  # no temporary file left either
    res = evaluate(run, ["principles"], limit=8)
    assert res["principles"]["n"] == 8


# --------------------------------------------------------------------------------------------------
# A real full disk: a tmpfs of a few hundred KB (needs root / CAP_SYS_ADMIN; skipped elsewhere)
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}); the file-size-limit "
                    f"tests cover the same paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_checkpoint_is_refused_before_writing_and_metrics_line_cut_back(small_disk):
    model = torch.nn.Linear(64, 64)                       # ~17 KB of weights: fits
    save_checkpoint(small_disk / "ckpt_last", model, {"iter": 20}, "a: 1\n")
    big = {"w": torch.zeros(160_000)}                     # 640 KB: more than the disk holds
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(small_disk / "ckpt_last", model, {"iter": 40}, "a: 1\n", weights=big)
    assert str(e.value).startswith(f"{small_disk / 'ckpt_last'}: the disk is full (the write needs about ")
    assert re.search(r"needs about 64\d\.\d KB\), [\d.]+ KB free there", str(e.value)), str(e.value)
    assert inspect_checkpoint(small_disk / "ckpt_last").iter == 20 and no_temporary_left(small_disk) == []

    log = LineLog(small_disk / "metrics.jsonl")
    log.write('{"iter": 1}\n')
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:             # take the rest of the disk
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    with pytest.raises(DiskFullError) as e:
        log.write('{"iter": 2, "loss": 1.0}\n' * 300)
    assert str(e.value).startswith(f"{small_disk / 'metrics.jsonl'}: the disk is full")
    assert (small_disk / "metrics.jsonl").read_text() == '{"iter": 1}\n'
    os.unlink(filler)                                     # space freed: the next line goes on
    log.write('{"iter": 2}\n')
    log.close()
    assert [r["iter"] for r in read_jsonl(small_disk / "metrics.jsonl")] == [1, 2]


def test_disk_full_error_survives_a_process_boundary():
    """A sweep worker's error reaches the sweep pickled; the message must arrive as written."""
    import errno
    import pickle

    e = DiskFullError("runs/x/ckpt_last", 2_000_000, OSError(errno.ENOSPC, "No space left on device"), "kept")
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.errno == errno.ENOSPC and back.needed == 2_000_000 and isinstance(back, OSError)
