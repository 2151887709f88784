"""foundry.mutate: the user's example, --list, every registered type on two bases, refusals, no-ops,
suggestions, lineage, the champion, and that the whole package stays torch-free."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foundry.config import ConfigError, from_dict, load_experiment
from foundry.mutate import (MUTATIONS, MutationError, NoOpMutation, apply_mutation, baseline_path, get_type,
                            mutation, promote, write_mutant)
from foundry.mutate.__main__ import main

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
REQUIRED = ["attention", "position", "norm", "norm_placement", "activation", "mlp_ratio", "moe", "depth", "width",
            "heads", "context", "loss", "lr", "lr_schedule", "batch_size", "warmup", "grad_clip", "weight_decay",
            "adam_betas", "dropout", "curriculum"]


@pytest.fixture
def exps(tmp_path) -> Path:
    d = tmp_path / "experiments"
    d.mkdir()
    shutil.copy(REPO / "experiments" / "baseline.yaml", d / "baseline.yaml")
    return d


def _cli(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "foundry.mutate", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_user_example_writes_attention_mla(exps):
    r = _cli(["attention", "mla"], exps.parent)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == "experiments/attention_mla.yaml"
    path = exps.parent / last
    cfg = load_experiment(path)
    base = load_experiment(exps / "baseline.yaml")
    assert cfg.model_args.attention == "mla" and cfg.model_args.position == base.model_args.position
    lin = cfg.lineage
    assert lin["parent"] == "experiments/baseline.yaml" and lin["mutation"] == "attention mla"
    assert lin["parent_hash"] == base.hash() and lin["hash"] == cfg.hash() != base.hash()
    assert cfg.out_dir == "runs/attention_mla"  # a mutant never trains into the baseline's run directory
    # the file is a complete experiment: it loads back to the config that was written
    assert from_dict(yaml.safe_load(path.read_text())) == cfg


def test_list_shows_at_least_21_types_with_variants(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert f"\n  {name} " in "\n" + out, name
    for v in ("gqa_<n>kv", "mqa", "mla", "sliding_<w>", "block_sparse", "strided", "wsd", "constant"):
        assert v in out
    assert len(MUTATIONS) >= 21 and all(name in MUTATIONS for name in REQUIRED)


def _bases(exps):
    v1 = load_experiment(exps / "baseline.yaml", ["model_args.n_layer=2", "model_args.n_embd=48",
                                                  "model_args.n_head=6", "model_args.block_size=64"])
    v2 = load_experiment(exps / "baseline.yaml", ["base_model=v2", "model_args.n_head=4", "model_args.n_embd=64",
                                                  "model_args.position=rope", "model_args.attention=gqa",
                                                  "model_args.n_kv_head=2", "model_args.norm=rmsnorm",
                                                  "model_args.mlp=swiglu"])
    return {"v1": v1, "v2": v2}


@pytest.mark.parametrize("type_name", sorted(set(REQUIRED) | {"qk_norm", "softcap", "tie_embeddings", "z_loss",
                                                                 "rope_theta", "data_order", "seed"}))
def test_every_type_every_listed_variant_is_valid_refused_or_noop(exps, type_name):
    """Generated from the registry: each concrete variant either gives a valid, different experiment (that
    round-trips through YAML) or is refused/no-op with a message; the function is pure."""
    mt = get_type(type_name)
    made = 0
    for base_name, base in _bases(exps).items():
        for v in mt.concrete(base):
            try:
                child = apply_mutation(base, type_name, v)
            except NoOpMutation as e:
                assert "no-op" in str(e)
                continue
            except MutationError as e:
                assert str(e).startswith("refused:"), (base_name, v, e)
                continue
            again = apply_mutation(base, type_name, v)
            assert child.hash() == again.hash() and child.hash() != base.hash()
            assert from_dict(yaml.safe_load(child.to_yaml())) == child
            assert child.lineage["mutation"] == f"{type_name} {v}" and child.lineage["parent_hash"] == base.hash()
            made += 1
    assert made >= 1, f"no variant of {type_name} produced an experiment on either base"


def test_invalid_result_is_refused_with_the_reason(exps):
    base = _bases(exps)["v1"]  # n_head = 6
    with pytest.raises(MutationError) as e:
        apply_mutation(base, "attention", "gqa_4kv")
    msg = str(e.value)
    assert "refused" in msg and "n_head=6" in msg and "n_kv_head=4" in msg and "[1, 2, 3, 6]" in msg
    with pytest.raises(NoOpMutation):       # a window covering the whole context is global attention
        apply_mutation(base, "attention", "sliding_64")
    assert apply_mutation(base, "attention", "gqa_3kv").model_args.n_kv_head == 3
    assert apply_mutation(base, "attention", "mqa").model_args.n_kv_head == 1
    assert apply_mutation(base, "attention", "sliding_16").model_args.sliding_window.window == 16


def test_noop_says_so_and_writes_nothing(exps):
    r = _cli(["attention", "mha"], exps.parent)
    assert r.returncode == 1 and "no-op" in r.stderr and "nothing written" in r.stderr
    assert sorted(p.name for p in exps.iterdir()) == ["baseline.yaml"]


def test_unknown_type_and_variant_list_valid_ones_closest_first(exps):
    r = _cli(["atention", "mla"], exps.parent)
    assert r.returncode == 2
    listed = r.stderr.split("closest first:")[1].split(",")
    assert listed[0].strip() == "attention" and len(listed) == len(MUTATIONS)
    r = _cli(["attention", "gqa2"], exps.parent)
    assert r.returncode == 2 and "closest first: gqa_2kv" in r.stderr and "gqa_<n>kv" in r.stderr
    r = _cli(["lr_schedule", "cosin"], exps.parent)
    assert "closest first: cosine" in r.stderr


def test_lr_keeps_min_lr_ratio_and_scale_syntax(exps):
    base = load_experiment(exps / "baseline.yaml")
    child = apply_mutation(base, "lr", "x0.5")
    assert child.training.learning_rate == pytest.approx(base.training.learning_rate / 2)
    assert child.training.min_lr / child.training.learning_rate == pytest.approx(
        base.training.min_lr / base.training.learning_rate)
    assert write_mutant(child, exps).name == "lr_x0.5.yaml"
    assert apply_mutation(base, "depth", "+2").model_args.n_layer == base.model_args.n_layer + 2
    assert apply_mutation(base, "adam_betas", "0.9,0.95").training.beta2 == 0.95
    assert apply_mutation(base, "lr_schedule", "warmup-stable-decay").training.lr_schedule == "wsd"


def test_gated_activation_keeps_parameter_count(exps):
    base = load_experiment(exps / "baseline.yaml", ["model_args.mlp_ratio=4.0"])
    child = apply_mutation(base, "activation", "swiglu")
    # 3 matrices of 8/3 n_embd = 2 matrices of 4 n_embd
    assert 3 * child.model_args.mlp_hidden == pytest.approx(2 * base.model_args.mlp_hidden, abs=3)


def test_a_new_type_is_one_function_with_its_own_file_name(exps):
    """The LoRA types join as one small function each; lora_rank 16 writes lora_r16.yaml."""
    @mutation("lora_rank_test", group="finetune", variants=("<r>",), stem=lambda v: f"lora_r{v}")
    def lora_rank_test(cfg, v):
        "LoRA rank (test stand-in writing model_args.extra)."
        return {"model_args.extra": {"lora_rank": int(v)}}
    try:
        base = load_experiment(exps / "baseline.yaml")
        path = write_mutant(apply_mutation(base, "lora_rank_test", "16"), exps)
        assert path.name == "lora_r16.yaml" and load_experiment(path).model_args.extra == {"lora_rank": 16}
    finally:
        del MUTATIONS["lora_rank_test"]


def test_lineage_chains_and_champion_is_the_new_baseline(exps, capsys):
    assert baseline_path(exps).name == "baseline.yaml"
    assert main(["lr", "x2", "--experiments", str(exps)]) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["depth", "+1", "--from", str(first), "--experiments", str(exps)]) == 0
    second = load_experiment(capsys.readouterr().out.strip().splitlines()[-1])
    assert second.lineage["history"] == ("lr x2", "depth +1") and second.lineage["parent"] == str(first)
    champ = promote(second, exps, {"rule": "test", "p": 0.01})
    assert champ.name == "champion.yaml" and baseline_path(exps) == champ
    assert load_experiment(champ).lineage["promoted"]["p"] == 0.01
    # mutations now start from the champion
    assert main(["warmup", "50", "--experiments", str(exps)]) == 0
    third = load_experiment(capsys.readouterr().out.strip().splitlines()[-1])
    assert third.lineage["parent"] == str(champ) and third.model_args.n_layer == second.model_args.n_layer
    assert third.lineage["history"] == ("lr x2", "depth +1", "warmup 50")
    promote(third, exps, {"rule": "test"})
    assert (exps / "champion.1.yaml").is_file()  # the previous champion is kept


def test_missing_baseline_and_bad_parent_are_clear(tmp_path, capsys):
    assert main(["lr", "x2", "--experiments", str(tmp_path)]) == 2
    assert "baseline.yaml" in capsys.readouterr().err
    assert main(["lr", "x2", "--from", str(tmp_path / "nope.yaml")]) == 2
    assert "no such experiment file" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load_experiment(tmp_path / "nope.yaml")


def test_scaffold_subcommand_is_wired(monkeypatch, capsys, tmp_path):
    import types
    fake = types.ModuleType("foundry.mutate.scaffold")
    fake.scaffold = lambda family, name: tmp_path / f"{family}_{name}.py"
    monkeypatch.setitem(sys.modules, "foundry.mutate.scaffold", fake)
    assert main(["new", "attention", "my_attn"]) == 0
    assert capsys.readouterr().out.strip().endswith("attention_my_attn.py")


def test_mutate_and_list_import_no_torch(exps):
    code = ("import sys; from foundry.mutate.__main__ import main; main(['--list']); "
            f"main(['lr', 'x2', '--experiments', {str(exps)!r}]); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
