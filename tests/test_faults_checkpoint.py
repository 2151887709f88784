"""Fault injection on checkpoints: bytes garbled in each file of ckpt_last, a file missing, a damaged
manifest, every checkpoint damaged. The damage is named (file and what is wrong), nothing intact is lost,
and the same command continues from the newest intact checkpoint, bit-identically to an uninterrupted run."""
import shutil

import pytest

from faults_helpers import RUN, assert_same_run, copy_run, garble, run_config
from foundry.checkpoint import inspect_checkpoint, load_run, load_state
from foundry.train import main as train_main
from foundry.train import train
from train_helpers import tiny_overrides


DAMAGE = {  # name -> (file in ckpt_last, how)
    "weights_data_garbled": ("model.safetensors", "end"),       # header intact: would load silently
    "weights_header_garbled": ("model.safetensors", "start"),
    "weights_truncated": ("model.safetensors", "truncate"),
    "state_garbled": ("state.pt", "middle"),
    "state_missing": ("state.pt", "delete"),
    "config_garbled": ("config.yaml", "start"),
    "manifest_garbled": ("manifest.json", "start"),
}


def _damage(f, how):
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        garble(f, how)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_ckpt_last_is_named_and_the_run_continues_from_the_previous_one(faults_reference, tmp_path, case, capsys):
    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    assert load_state(run / "ckpt_last")["iter"] == 60 and inspect_checkpoint(run / "ckpt_last.prev1").iter == 40
    shutil.rmtree(run / "ckpt_best")  # leave ckpt_last.prev1 (iteration 40) as the newest intact one
    name, how = DAMAGE[case]
    _damage(run / "ckpt_last" / name, how)

    train(run_config(data, run), quiet=True)  # what re-running the same command does

    err = capsys.readouterr().err
    assert f"{run / 'ckpt_last'}: {name}" in err, err    # the file, then what is wrong with it
    assert f"continuing from {run / 'ckpt_last.prev1'} (iteration 40)" in err
    assert (run / "ckpt_last.damaged" / "config.yaml").exists() or name == "config.yaml"  # kept for inspection
    assert_same_run(ref, run, after=40)
    assert inspect_checkpoint(run / "ckpt_last").intact


def test_damaged_ckpt_best_is_refused_by_readers_naming_the_intact_one(faults_reference, tmp_path):
    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    garble(run / "ckpt_best" / "model.safetensors", "end")
    with pytest.raises(ValueError) as e:
        load_run(run)  # what eval, generate and the sweep's evaluation call
    msg = str(e.value)
    assert f"{run / 'ckpt_best'}: model.safetensors does not match its checksum" in msg
    assert str(run / "ckpt_last") in msg  # the intact alternative
    assert load_run(run / "ckpt_last").config.training.max_iters == 60


def test_no_intact_checkpoint_stops_with_the_exact_command_and_keeps_everything(faults_reference, tmp_path, capsys):
    data, ref = faults_reference
    run = copy_run(ref, tmp_path / "run")
    for d in ("ckpt_last", "ckpt_last.prev1", "ckpt_best"):
        garble(run / d / "state.pt", "middle")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    exp = tmp_path / "exp.yaml"
    exp.write_text("base_model: v1\n")
    argv = [str(exp), "--quiet", "--no-store", *tiny_overrides(data, run, **RUN)]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{run}: no intact checkpoint" in err
    for d in ("ckpt_last", "ckpt_last.prev1", "ckpt_best"):
        assert f"{d}: state.pt does not match its checksum" in err
    assert f"mv {run} {run}.damaged" in err and "python -m foundry.train " + str(exp) in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing moved or deleted

    shutil.move(run, f"{run}.damaged")  # what the message says; then the same command trains afresh
    assert train_main(argv) == 0
    assert_same_run(ref, run)


def _tiny_checkpoints(run, iters):
    import torch

    from foundry.checkpoint import save_checkpoint
    for it in iters:
        save_checkpoint(run / "ckpt_last", torch.nn.Linear(4, 4), {"iter": it}, "a: 1\n")


def test_rotation_keeps_one_previous_and_a_crash_between_renames_leaves_an_intact_one(tmp_path):
    from foundry.checkpoint import resume_checkpoint

    _tiny_checkpoints(tmp_path, (10, 20, 30))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_last", "ckpt_last.prev1"]
    assert inspect_checkpoint(tmp_path / "ckpt_last").iter == 30 and inspect_checkpoint(tmp_path / "ckpt_last.prev1").iter == 20
    (tmp_path / "ckpt_last").rename(tmp_path / "ckpt_last.tmp123")  # killed between the two renames of a save
    said = []
    assert resume_checkpoint(tmp_path, say=said.append) == tmp_path / "ckpt_last.prev1"
    assert not (tmp_path / "ckpt_last.tmp123").exists() and "iteration 20" in said[-1]


def test_a_checkpoint_set_aside_earlier_is_left_alone(tmp_path):
    from foundry.checkpoint import resume_checkpoint

    _tiny_checkpoints(tmp_path, (10, 20))
    garble(tmp_path / "ckpt_last.prev1" / "state.pt", "middle")
    (tmp_path / "ckpt_last.prev1").rename(tmp_path / "ckpt_last.prev1.damaged")
    said = []
    assert resume_checkpoint(tmp_path, say=said.append) == tmp_path / "ckpt_last" and said == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_last", "ckpt_last.prev1.damaged"]


def test_weights_file_is_standard_safetensors_for_every_dtype(tmp_path):
    """foundry streams model.safetensors itself (hashing on the way); the reference reader must read it back."""
    import torch
    from safetensors.torch import load_file

    from foundry.checkpoint import save_checkpoint
    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(7).to(torch.bfloat16), "f16": torch.randn(2).half(),
               "i64": torch.arange(4), "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3),
               "scalar": torch.tensor(2.5)}
    save_checkpoint(tmp_path / "ckpt", torch.nn.Linear(1, 1), {"iter": 1}, "a: 1\n", weights=tensors)
    back = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    assert inspect_checkpoint(tmp_path / "ckpt").intact


@pytest.mark.parametrize("manifest", ['{"files": {"model.safetensors": 3}}', '[1, 2]',
                                      '{"files": {"../../etc/passwd": {"bytes": 1, "sha256": "x"}}}'])
def test_a_manifest_of_the_wrong_shape_is_damage_not_a_traceback(tmp_path, manifest):
    _tiny_checkpoints(tmp_path, (10,))
    (tmp_path / "ckpt_last" / "manifest.json").write_text(manifest)
    assert inspect_checkpoint(tmp_path / "ckpt_last").problem == "manifest.json is damaged (not the JSON foundry writes)"


@pytest.mark.parametrize("damage", ["weights_truncated", "state_garbled", "config_garbled"])
def test_checkpoint_from_before_manifests_is_checked_by_structure(tmp_path, damage):
    _tiny_checkpoints(tmp_path, (10,))
    ck = tmp_path / "ckpt_last"
    (ck / "manifest.json").unlink()  # as foundry wrote them before manifests
    assert inspect_checkpoint(ck).intact and inspect_checkpoint(ck).iter == 10
    name, how = {"weights_truncated": ("model.safetensors", "truncate"), "state_garbled": ("state.pt", "middle"),
                 "config_garbled": ("config.yaml", "start")}[damage]
    if name == "config.yaml":
        (ck / name).write_text("{{{ not: yaml")
    else:
        _damage(ck / name, how)
    assert inspect_checkpoint(ck).problem.startswith(f"{name} is damaged")
