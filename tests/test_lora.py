"""LoRA as a transform (foundry/lora.py): identity at init, merge == unmerged, only adapters learn, the base is
recovered with adapters disabled, adapter files round-trip, bad targets are refused naming the layers."""
from __future__ import annotations

import pytest
import torch

from foundry import lora
from foundry.config import ConfigError, ExperimentConfig, LoRAConfig
from foundry.model import GPT

V1 = {"model_args.n_layer": 2, "model_args.n_head": 4, "model_args.n_embd": 32, "model_args.block_size": 16,
      "model_args.vocab_size": 64}
V2 = {**V1, "base_model": "v2", "model_args.n_kv_head": 2}


def tiny(over=V1, **extra) -> GPT:
    torch.manual_seed(0)
    cfg = ExperimentConfig().replace({**over, **extra}) if over is V1 else _v2(extra)
    return GPT(cfg.model_args).eval()


def _v2(extra):
    from foundry.config import from_dict
    raw = {"base_model": "v2", "model_args": {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32,
                                              "block_size": 16, "vocab_size": 64}}
    return from_dict(raw).replace(extra)


def randomise_b(model):
    with torch.no_grad():
        for m in lora.lora_layers(model).values():
            m.lora_B.normal_(0, 0.05)


IDX = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("over", [V1, V2], ids=["v1", "v2"])
def test_zero_b_leaves_outputs_unchanged_and_merge_equals_unmerged(over):
    model = tiny(over)
    base = model(IDX)
    wrapped = lora.apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]))
    assert len(wrapped) == 8
    torch.testing.assert_close(model(IDX), base, rtol=0, atol=0)
    randomise_b(model)
    adapted = model(IDX)
    assert (adapted - base).abs().max() > 1e-3            # the adapters do something
    lora.merge(model)
    torch.testing.assert_close(model(IDX), adapted, rtol=1e-5, atol=1e-5)
    lora.unmerge(model)
    torch.testing.assert_close(model(IDX), adapted, rtol=1e-5, atol=1e-5)
    with lora.adapters_disabled(model):
        torch.testing.assert_close(model(IDX), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(IDX), adapted, rtol=1e-5, atol=1e-5)


def test_fused_qkv_adapts_each_projection_like_separate_layers():
    """The fused qkv's delta equals three independent rank-r adapters on q, k and v (PEFT's layout)."""
    model = tiny(V2)
    lora.apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=["attn.qkv"]))
    m = model.blocks[0].attn.qkv
    assert m.splits == [32, 16, 16]
    randomise_b(model)
    x = torch.randn(5, 32)
    r, s = m.rank, m.alpha / m.rank
    naive = torch.cat([x @ m.lora_A[i * r:(i + 1) * r].T @ m.lora_B[o:o + n].T * s
                       for i, (o, n) in enumerate([(0, 32), (32, 16), (48, 16)])], dim=-1)
    torch.testing.assert_close(m.delta(x), naive)
    torch.testing.assert_close(x @ m.delta_weight().T, naive, rtol=1e-5, atol=1e-6)


def test_only_adapters_get_gradients_and_the_share_is_reported():
    model = tiny(V2).train()
    lora.apply_lora(model, LoRAConfig(rank=4, targets=["attn.qkv", "attn.proj"]))
    randomise_b(model)
    loss, _ = model(IDX, IDX)
    loss.backward()
    for n, p in model.named_parameters():
        if lora.is_adapter_key(n):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n
    k, total = lora.trainable_share(model)
    assert k == sum(p.numel() for n, p in model.named_parameters() if lora.is_adapter_key(n))
    assert lora.describe_trainable(model).startswith(f"trainable {100 * k / total:.2f}% (")


def test_base_checkpoint_names_are_kept_and_adapters_round_trip():
    model = tiny(V2)
    plain = set(model.state_dict())
    lora.apply_lora(model, LoRAConfig(rank=2, targets=["attn.qkv", "mlp.proj"]))
    randomise_b(model)
    keys = set(model.state_dict())
    assert plain <= keys and all(lora.is_adapter_key(k) for k in keys - plain)
    saved, out = lora.adapter_state(model), model(IDX)
    fresh = tiny(V2)
    lora.apply_lora(fresh, LoRAConfig(rank=2, targets=["attn.qkv", "mlp.proj"]))
    lora.load_adapter_state(fresh, saved)
    torch.testing.assert_close(fresh(IDX), out)
    merged = tiny(V2)
    merged.load_state_dict(lora.merged_state(fresh))     # an ordinary GPT with the adapters folded in
    torch.testing.assert_close(merged(IDX), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fresh(IDX), out)          # merged_state left the adapted model as it was
    with pytest.raises(ValueError, match="do not match"):
        other = tiny(V2)
        lora.apply_lora(other, LoRAConfig(rank=2, targets=["attn.qkv"]))
        lora.load_adapter_state(other, saved)


def test_a_target_that_matches_nothing_lists_the_linear_layers():
    with pytest.raises(ConfigError, match=r"'attn\.q_proj' matches none .*blocks\.\*\.attn\.qkv \(x2\).*lm_head"):
        lora.apply_lora(tiny(V2), LoRAConfig(rank=2, targets=["attn.q_proj"]))
    with pytest.raises(ConfigError, match="tied"):
        lora.apply_lora(tiny(V1), LoRAConfig(rank=2, targets=["lm_head"]))
    model = tiny(V2)
    assert lora.apply_lora(model, LoRAConfig(rank=2, targets=["blocks.1.*"])) == [
        "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"]
    assert model.blocks[1].mlp.fc.splits == [model.blocks[1].mlp.fc.out_features // 2] * 2  # gate | up


@pytest.mark.parametrize("name", ["llama3-1b", "llama3-8b"])
def test_default_targets_keep_the_trainable_share_small_on_zoo_configs(name):
    """lora r=16 on the default targets trains 0.1-10% of the parameters (the README's 90-99% reduction),
    counted on the meta device (no memory)."""
    from foundry.config import from_dict
    catalog = pytest.importorskip("foundry.zoo.catalog")
    m = from_dict({"base_model": "v2", "model_args": catalog.named_model_args(name)}).model_args
    with torch.device("meta"):
        model = GPT(m)
        lora.apply_lora(model, LoRAConfig(rank=16))
    k, n = lora.trainable_share(model)
    assert 0.1 <= 100 * k / n <= 10, lora.describe_trainable(model)


@pytest.mark.parametrize("over", [{}, {"base_model": "v2"}], ids=["baseline", "v2-baseline"])
def test_default_targets_on_the_baselines_train_between_a_tenth_and_a_tenth_of_a_percent(over):
    from foundry.config import load_experiment
    cfg = load_experiment("experiments/baseline.yaml", [f"{k}={v}" for k, v in
                                                         {"model_args.vocab_size": 65, **over}.items()])
    model = GPT(cfg.model_args)
    lora.apply_lora(model, LoRAConfig(rank=16))
    k, n = lora.trainable_share(model)
    assert 0.1 <= 100 * k / n <= 10, lora.describe_trainable(model)


def test_a_lora_rank_sweep_runs_end_to_end_with_paired_seeds_and_a_promotion_decision(tmp_path):
    """`lora_rank` is a mutation type like any other: the sweep trains the LoRA baseline and each rank on the same
    paired seeds from the same trained base, ranks them, confirms on fresh seeds and decides on promotion."""
    import json

    import yaml
    from finetune_helpers import BASE, make_base_run, sft_records, write_jsonl

    from foundry.cli.sweep import main
    from foundry.config import load_experiment

    base = make_base_run(tmp_path / "base")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(24))
    raw: dict = {"init_from": str(base), "out_dir": str(tmp_path / "runs" / "ft"), "lora": {"rank": 2, "alpha": 8},
                 "data": {"path": str(data), "val_examples": 4}}
    for key, value in {**BASE, "training.objective": "sft", "training.max_iters": 8, "training.eval_interval": 8,
                       "training.learning_rate": 1e-2, "training.warmup_iters": 1}.items():
        sect, name = key.split(".")
        raw.setdefault(sect, {})[name] = value
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(raw))
    out, exps = tmp_path / "sw", tmp_path / "experiments"
    rc = main(["lora_rank", "4", "8", "--base", str(tmp_path / "ft.yaml"), "--seeds", "2", "--jobs", "1",
               "--out", str(out), "--store", str(tmp_path / "s.sqlite"), "--experiments", str(exps), "--promote",
               "--progress", "1000", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"baseline", "lora_r4", "lora_r8"}
    for cand, rank in (("baseline", 2), ("lora_r4", 4), ("lora_r8", 8)):
        r = res["results"][cand]
        assert r["status"] == "done" and len(r["seeds"]) == 2, r.get("error")
        trial = next((out / "trials" / cand).rglob("config.yaml"))
        cfg = load_experiment(trial)
        assert cfg.lora.rank == rank and cfg.init_from == str(base)          # adapters on the trained base
    dec = res["decision"]
    assert dec["winner"] in ("lora_r4", "lora_r8", None) and "promote" in dec
    assert (exps / "champion.yaml").exists() == bool(dec["promote"])


def _dpo_experiment(tmp_path):
    """A LoRA DPO experiment on a tiny trained base and 24 preference pairs (the shared helpers' shapes)."""
    import yaml
    from finetune_helpers import BASE, make_base_run, pair_records, write_jsonl

    base = make_base_run(tmp_path / "base")
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(24))
    raw: dict = {"init_from": str(base), "out_dir": str(tmp_path / "runs" / "dpo"), "lora": {"rank": 2, "alpha": 8},
                 "data": {"path": str(data), "val_examples": 4}}
    for key, value in {**BASE, "training.objective": "dpo", "training.max_iters": 4, "training.eval_interval": 4,
                       "training.batch_size": 2, "training.learning_rate": 1e-2, "training.warmup_iters": 1}.items():
        sect, name = key.split(".")
        raw.setdefault(sect, {})[name] = value
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "dpo.yaml"


def test_a_dpo_sweep_without_an_eval_task_is_refused_before_anything_trains(tmp_path, capsys):
    """DPO validation measures preference loss and accuracy, not the bits per byte a task-less sweep ranks by:
    such a sweep is refused at planning, naming the fix, and no trial runs."""
    from foundry.cli.sweep import main

    exp = _dpo_experiment(tmp_path)
    out = tmp_path / "sw"
    rc = main(["lora_rank", "4", "--base", str(exp), "--seeds", "2", "--jobs", "1", "--out", str(out),
               "--store", str(tmp_path / "s.sqlite"), "--experiments", str(tmp_path / "experiments"), "--quiet"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "dpo objective" in err and "--eval-task" in err, err
    assert not (out / "trials").exists()


def test_a_dpo_sweep_ranks_by_its_eval_task_and_decides(tmp_path):
    """With an eval task a sweep over a DPO experiment (here `lora_rank`) trains every trial, scores the task and
    reaches a promotion decision, even where the task cannot separate the candidates (DPO trials have no
    bits per byte to fall back on: the task still ranks, said out loud)."""
    import json

    from foundry.cli.sweep import main

    exp = _dpo_experiment(tmp_path)
    out = tmp_path / "sw"
    rc = main(["lora_rank", "4", "--base", str(exp), "--seeds", "2", "--jobs", "1", "--out", str(out),
               "--store", str(tmp_path / "s.sqlite"), "--experiments", str(tmp_path / "experiments"),
               "--eval-task", "principles", "--promote", "--progress", "1000", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for cand in ("baseline", "lora_r4"):
        r = res["results"][cand]
        assert r["status"] == "done" and r["val_bpb"] == [None, None], r.get("error")
        assert len(r["tasks"]["principles"]["scores"]) == 2
    assert res["decision"]["how"]["metric"] == "capability" and "promote" in res["decision"]


def test_prune_checkpoints_keeps_only_the_baseline_and_the_winner_after_the_decision(tmp_path):
    """--prune-checkpoints: once the sweep has decided, every other candidate's trial checkpoints are gone (on a
    pretrained base each takes GBs) while its metrics, config and the report stay."""
    import json

    from foundry.cli.sweep import main

    exp = _dpo_experiment(tmp_path)
    out = tmp_path / "sw"
    rc = main(["lora_rank", "4", "8", "--base", str(exp), "--seeds", "2", "--jobs", "1", "--out", str(out),
               "--store", str(tmp_path / "s.sqlite"), "--experiments", str(tmp_path / "experiments"),
               "--eval-task", "principles", "--prune-checkpoints", "--progress", "1000", "--quiet"])
    assert rc == 0
    winner = json.loads((out / "results.json").read_text())["decision"]["winner"]
    kept = {"baseline", winner} - {None}
    for cand in ("baseline", "lora_r4", "lora_r8"):
        runs = sorted((out / "trials" / cand).glob("s*"))
        assert runs and all((r / "metrics.jsonl").is_file() and (r / "config.yaml").is_file() for r in runs)
        has_ckpt = any(any(r.glob("ckpt_*")) for r in runs)
        assert has_ckpt == (cand in kept), (cand, winner)
    assert (out / "report.md").is_file()
