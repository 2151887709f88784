"""Architecture surgery (foundry/surgery): each weight transfer is exact where it should be, and refuses
what it cannot do with the reason. Tiny Llama-style models (3 layers, 32 wide) so the file runs in seconds."""
from __future__ import annotations

import json
import math

import pytest
import torch

from foundry.config import from_dict
from foundry.model import GPT
from foundry.surgery import SurgeryError, operate, surgery_cost
from foundry.surgery.cost import kv_bytes_per_token
from foundry.surgery.transforms import block_influence, residual_stream, split_qkv

V, T = 64, 24


def experiment(**model_args):
    args = dict(n_layer=3, n_head=4, n_kv_head=2, n_embd=32, block_size=32, vocab_size=V, rope={"theta": 500.0})
    args.update(model_args)
    return from_dict({"base_model": "v2", "model_args": args})


def parent_of(cfg, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg.model_args).eval()
    with torch.no_grad():  # trained-looking weights: larger than the init, so attention is not uniform
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model


def tokens(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, T + 1), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x[:, :-1])


# --------------------------------------------------------------------------------------------------
# GQA / MQA by mean pooling
# --------------------------------------------------------------------------------------------------
def equalise_kv_groups(model: GPT, groups: int) -> None:
    """Make the K/V heads within each of `groups` groups equal (so pooling them loses nothing)."""
    m = model.cfg
    with torch.no_grad():
        for b in model.blocks:
            q, k, v = split_qkv(b.attn.qkv.weight, m.n_head, m.kv_heads, m.head_dim)
            for t in (k, v):
                g = t.unflatten(0, (groups, -1))
                g[:] = g[:, :1].clone()


@pytest.mark.parametrize("variant, groups", [("mqa", 1), ("gqa_1kv", 1)])
def test_gqa_pooling_of_equal_kv_heads_reproduces_the_parent(variant, groups):
    cfg = experiment()
    parent = parent_of(cfg)
    equalise_kv_groups(parent, groups)
    s = operate(parent, cfg, "attention", variant)
    assert s.config.model_args.kv_heads == 1 and s.model.blocks[0].attn.n_kv_head == 1
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-5, rtol=0)
    assert s.config.lineage["surgery"]["mutation"] == f"attention {variant}"


def test_gqa_pooling_of_different_heads_is_their_mean_and_costs_kl():
    cfg = experiment(n_kv_head=4)
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "gqa_2kv")
    m = parent.cfg
    _, k, v = split_qkv(parent.blocks[1].attn.qkv.weight, m.n_head, 4, m.head_dim)
    _, k2, v2 = split_qkv(s.model.blocks[1].attn.qkv.weight, m.n_head, 2, m.head_dim)
    torch.testing.assert_close(k2[1], (k[2] + k[3]) / 2)
    torch.testing.assert_close(v2[0], (v[0] + v[1]) / 2)
    cost = surgery_cost(parent, s.model, tokens())
    assert cost["kl"] > 1e-3 and not s.exact
    assert cost["kv_bytes_child"] * 2 == cost["kv_bytes_parent"]


def test_gqa_to_mha_repeats_heads_exactly():
    cfg = experiment()
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "mha")
    x = tokens()
    assert s.exact and s.model.blocks[0].attn.n_kv_head == 4
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-5, rtol=0)


def test_gqa_pooling_refuses_groups_that_do_not_divide():
    cfg = experiment(n_head=6, n_embd=48, n_kv_head=3)
    with pytest.raises(SurgeryError, match="cannot be grouped into 2"):
        operate(parent_of(cfg), cfg, "attention", "gqa_2kv")


# --------------------------------------------------------------------------------------------------
# MLA by MHA2MLA
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_full_rank_svd_without_rope_reproduces_the_parent(bias):
    """No rotary channels: every K/V channel goes through the latent, and at full rank the SVD factors
    multiply back to the parent's projections (biases moved to kv_up)."""
    cfg = experiment(position="nope", bias=bias)
    parent = parent_of(cfg)
    full = 2 * 2 * 8  # n_kv_head * 2 * head_dim
    s = operate(parent, cfg, "attention", "mla", overrides={"model_args.mla.kv_rank": full})
    assert s.exact and s.details["svd_rel_error_max"] < 1e-5
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-4, rtol=0)


def partial_rope_attention(attn, x, freqs: list[list[int]], theta: float, rot: int | None = None):
    """The parent's attention with RoPE kept only on the frequency pairs freqs[j] of each KV head j (and its
    query heads), written out from the paper: q, k from the parent's weights; pair i = channels (i, i + rot/2)
    rotated at theta^(-2i/rot) when i is kept; every other channel unrotated; causal softmax; projection."""
    B, L, _ = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_dim
    rot = rot or hs
    q, k, v = attn.project_qkv(x)                                    # (B, h, L, hs)
    pos = torch.arange(L, dtype=torch.float32)
    inv = theta ** (-torch.arange(0, rot, 2, dtype=torch.float32) / rot)  # (rot/2,)
    ang = pos[:, None] * inv[None, :]

    def rotate(t, kv_head_of):
        t = t.clone()
        for h in range(t.shape[1]):
            for i in freqs[kv_head_of(h)]:
                a, b = t[:, h, :, i].clone(), t[:, h, :, i + rot // 2].clone()
                c, s = ang[:, i].cos(), ang[:, i].sin()
                t[:, h, :, i], t[:, h, :, i + rot // 2] = a * c - b * s, b * c + a * s
        return t

    q, k = rotate(q, lambda h: h // (nh // nkv)), rotate(k, lambda h: h)
    k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return attn.proj((att @ v).transpose(1, 2).reshape(B, L, nh * hs))


def test_full_rank_svd_with_partial_rope_reproduces_the_parents_attention():
    """At full rank the converted attention is the parent's attention with RoPE kept on the highest-frequency
    channels only (S_high, the partial-RoPE step of MHA2MLA), checked against that formula written out."""
    cfg = experiment()
    parent = parent_of(cfg)
    keep = 4
    s = operate(parent, cfg, "attention", "mla", overrides={"model_args.mla.kv_rank": 2 * (2 * 8 - keep),
                                                            "model_args.mla.rope_head_dim": keep})  # S_high: the default
    m = s.config.model_args.mla
    assert m.rope_heads == 2 and not m.latent_norm and m.rope_select == "high"
    assert s.details["rope_freqs"] == [[[0, 1], [0, 1]]] * 3
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        child_attn = s.model.blocks[1].attn(x, s.model.pos, torch.arange(12))
        ref = partial_rope_attention(parent.blocks[1].attn, x, [[0, 1], [0, 1]], 500.0)
    torch.testing.assert_close(child_attn, ref, atol=1e-4, rtol=1e-4)  # fp32 SVD round-off; a wrong channel is O(1)


@pytest.mark.parametrize("select", ["norm", "high"])
def test_mla_keeping_every_frequency_at_full_rank_reproduces_the_parent(select):
    """Keeping RoPE on every frequency pair (rope_head_dim = head size: only V and no key channel go through
    the latent) at full rank loses nothing, whichever selection; the child keeps the parent's rope config."""
    cfg = experiment()
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "mla", calib=tokens(3, seed=4)[:, :-1],
                overrides={"model_args.mla.kv_rank": 2 * 8, "model_args.mla.rope_head_dim": 8,
                           "model_args.mla.rope_select": select})
    assert s.exact and s.config.model_args.rope == cfg.model_args.rope
    assert s.details["rope_freqs"] == [[[0, 1, 2, 3]] * 2] * 3
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-4, rtol=0)


def test_mla_of_a_partial_rotary_parent_keeps_its_rotation_and_reproduces_it_at_full_rank():
    """`attention mla` on a parent with rope.fraction 0.5 (4 of 8 channels rotated): the mutation keeps the
    parent's rotation (rope_select 'high' over its 2 frequency pairs) instead of being refused, and keeping both
    pairs at full rank reproduces the parent exactly."""
    from foundry.mutate import apply_mutation
    cfg = experiment(rope={"theta": 500.0, "fraction": 0.5})
    child = apply_mutation(cfg, "attention", "mla")  # from scratch: a valid config
    assert child.model_args.mla.rope_select == "high" and child.model_args.rope.fraction == 0.5
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "mla", overrides={"model_args.mla.kv_rank": 2 * (2 * 8 - 4),
                                                            "model_args.mla.rope_head_dim": 4})
    assert s.exact and s.details["rope_freqs"] == [[[0, 1], [0, 1]]] * 3
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-4, rtol=0)


def plant_pair_norms(attn, big_k: dict[int, list[int]], big_q: dict[int, list[int]], small_q: dict[int, list[int]]):
    """Scale the parent's q/k rows of chosen frequency pairs (channels i and i + hs/2): big_k[j] pairs of KV
    head j x10, big_q[h] pairs of query head h x10, small_q[h] x0.01 (so a large key alone is not enough)."""
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_dim
    with torch.no_grad():
        q, k, _ = split_qkv(attn.qkv.weight, nh, nkv, hs)
        for t, plan, f in ((k, big_k, 10.0), (q, big_q, 10.0), (q, small_q, 0.01)):
            for head, pairs in plan.items():
                for i in pairs:
                    t[head, [i, i + hs // 2]] *= f


def test_mla_norm_selection_keeps_each_heads_largest_query_key_pairs():
    """MHA2MLA's 2-norm selection on a constructed case: per KV head, the pairs whose mean query norm x key
    norm is largest keep RoPE, different per head; a large key with a near-zero query is passed over; the
    converted attention at full rank is the parent's with RoPE on exactly those pairs per head."""
    cfg = experiment(n_layer=2)
    parent = parent_of(cfg)
    attn = parent.blocks[0].attn  # KV head 0 serves query heads 0, 1; KV head 1 serves 2, 3
    plant_pair_norms(attn, big_k={0: [1, 3], 1: [0, 2]}, big_q={2: [3]}, small_q={2: [0], 3: [0]})
    s = operate(parent, cfg, "attention", "mla", calib=tokens(3, seed=4)[:, :-1],
                overrides={"model_args.mla.kv_rank": 2 * (2 * 8 - 4), "model_args.mla.rope_head_dim": 4,
                           "model_args.mla.rope_select": "norm"})
    assert s.config.model_args.mla.rope_select == "norm" and s.details["rope_strategy"] == "S_2-norm"
    # head 0: keys 1 and 3 are large; head 1: key 0 is large but its queries are ~0, so 2 and the planted q 3
    want = [[1, 3], [2, 3]]
    assert s.details["rope_freqs"][0] == want
    assert s.model.blocks[0].attn.rope_freqs.tolist() == want
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        got = s.model.blocks[0].attn(x, s.model.pos, torch.arange(12))
        ref = partial_rope_attention(attn, x, want, 500.0)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        # a deliberate breakage: the kept frequencies of head 1 swapped for the highest ones -> caught
        s.model.blocks[0].attn.rope_freqs[1] = torch.tensor([0, 1])
        broken = s.model.blocks[0].attn(x, s.model.pos, torch.arange(12))
    assert (broken - ref).abs().max() > 1e-2


def test_mla_truncation_costs_more_the_lower_the_rank_and_saves_cache():
    cfg = experiment()
    parent = parent_of(cfg)
    x = tokens()
    kl, err = [], []
    for r in (16, 6):  # full rank is 2 * (2 * 8 - 4) = 24
        s = operate(parent, cfg, "attention", f"mla_{r}", calib=tokens(3, seed=4)[:, :-1],
                    overrides={"model_args.mla.rope_head_dim": 4})
        cost = surgery_cost(parent, s.model, x)
        kl.append(cost["kl"]), err.append(s.details["svd_rel_error_mean"])
        assert cost["kv_bytes_child"] == 3 * (r + 2 * 4) * 4  # layers x (latent + 2 rope keys) x fp32
    assert 0 < err[0] < err[1] and kl[0] < kl[1]


def test_converted_mla_decodes_from_its_latent_cache_like_the_full_forward_and_reloads(tmp_path):
    """Per-key RoPE frequencies (planted to differ between the two keys) survive decoding from the latent cache
    (absorbed attention) and a save / load as a run directory (the `rope_freqs` buffer is in the weights)."""
    from foundry.checkpoint import load_run
    from foundry.surgery.run import save_run

    cfg = experiment()
    parent = parent_of(cfg)
    for b in parent.blocks:
        plant_pair_norms(b.attn, big_k={0: [2, 3], 1: [0, 1]}, big_q={}, small_q={})
    s = operate(parent, cfg, "attention", "mla_12", calib=tokens(3, seed=4)[:, :-1],
                overrides={"model_args.mla.rope_head_dim": 4, "model_args.mla.rope_select": "norm"})
    assert s.model.blocks[0].attn.rope_freqs.tolist() == [[2, 3], [0, 1]]
    prompt = tokens(1)[0, :6].tolist()
    assert s.model.generate([prompt], 8, temperature=0) == s.model.generate([prompt], 8, temperature=0,
                                                                             use_cache=False)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps({"type": "char", "chars": [chr(48 + i) for i in range(V)]}))
    save_run(s.model, s.config, tok, tmp_path / "child")
    back = load_run(tmp_path / "child").model
    assert back.blocks[2].attn.rope_freqs.tolist() == s.model.blocks[2].attn.rope_freqs.tolist()
    x = tokens()
    torch.testing.assert_close(logits(back, x), logits(s.model, x), atol=0, rtol=0)


def test_mla_refuses_a_rank_above_the_projections():
    cfg = experiment(position="nope")
    with pytest.raises(SurgeryError, match="exceeds the rank"):
        operate(parent_of(cfg), cfg, "attention", "mla_64")


# --------------------------------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bi", "angular"])
def test_removing_a_block_with_zero_residual_contribution_changes_nothing(method):
    cfg = experiment(n_layer=4)
    parent = parent_of(cfg)
    with torch.no_grad():  # block 2 writes nothing into the residual stream
        parent.blocks[2].attn.proj.weight.zero_()
        parent.blocks[2].mlp.proj.weight.zero_()
    calib = tokens(3, seed=5)
    assert block_influence(residual_stream(parent, calib[:, :-1]))[2] == pytest.approx(0, abs=1e-6)
    s = operate(parent, cfg, "depth", "-1", calib=calib[:, :-1], depth_method=method)
    assert s.details["dropped"] == [2] and s.config.model_args.n_layer == 3
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-5, rtol=0)


def test_depth_drops_the_least_influential_blocks_and_needs_calibration():
    cfg = experiment(n_layer=4)
    parent = parent_of(cfg)
    with pytest.raises(SurgeryError, match="calibration"):
        operate(parent, cfg, "depth", "-2")
    calib = tokens(3, seed=5)[:, :-1]
    s = operate(parent, cfg, "depth", "-2", calib=calib)
    bi = s.details["scores"]
    assert s.details["dropped"] == sorted(sorted(range(4), key=bi.__getitem__)[:2])
    kept = [i for i in range(4) if i not in s.details["dropped"]]
    torch.testing.assert_close(s.model.blocks[1].attn.qkv.weight, parent.blocks[kept[1]].attn.qkv.weight)


# --------------------------------------------------------------------------------------------------
# mlp_ratio
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_mlp_pruning_that_keeps_every_live_unit_is_exact(mlp):
    """Units whose pre-activations are zero contribute nothing; pruning to the live ones keeps them all,
    in order, and the output is unchanged."""
    cfg = experiment(mlp=mlp, mlp_ratio=2.0, mlp_multiple_of=1)   # hidden 64
    parent = parent_of(cfg)
    dead = torch.arange(0, 64, 2)                                 # every other unit
    with torch.no_grad():
        for b in parent.blocks:
            b.mlp.fc.weight[dead] = 0
            if mlp == "swiglu":
                b.mlp.fc.weight[64 + dead] = 0
    s = operate(parent, cfg, "mlp_ratio", "1.0", calib=tokens(2, seed=7)[:, :-1])
    assert s.config.model_args.mlp_hidden == 32
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-5, rtol=0)


def test_mlp_widening_adds_units_that_write_nothing():
    cfg = experiment()
    parent = parent_of(cfg)
    s = operate(parent, cfg, "mlp_ratio", "x2")
    assert s.exact and s.config.model_args.mlp_hidden > parent.cfg.mlp_hidden
    x = tokens()
    torch.testing.assert_close(logits(s.model, x), logits(parent, x), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Mutations without a transfer; cost figures
# --------------------------------------------------------------------------------------------------
def test_a_mutation_without_a_transfer_is_refused_unless_config_only():
    cfg = experiment()
    parent = parent_of(cfg)
    with pytest.raises(SurgeryError, match="--config-only"):
        operate(parent, cfg, "activation", "geglu")
    s = operate(parent, cfg, "activation", "geglu", config_only=True)
    assert s.config.model_args.mlp == "geglu" and not s.exact and "config-only" in s.method


def test_cost_of_an_identical_child_is_zero_and_decode_speed_is_measured():
    cfg = experiment()
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "mha")
    cost = surgery_cost(parent, s.model, tokens(), decode_prompt=[1, 2, 3], decode_tokens=4, decode_rounds=1)
    assert cost["kl"] == pytest.approx(0, abs=1e-6) and cost["ppl_ratio"] == pytest.approx(1, abs=1e-5)
    assert cost["kv_bytes_child"] == 2 * kv_bytes_per_token(parent) and cost["decode_tps_child"] > 0
    assert cost["params_child"] > cost["params_parent"]


def test_mlp_ratio_surgery_overrides_a_checkpoints_explicit_width():
    """Pretrained configs name their MLP width (mlp_hidden_size); the mutation scales that width."""
    cfg = experiment(mlp_hidden_size=48, mlp_multiple_of=1)
    s = operate(parent_of(cfg), cfg, "mlp_ratio", "x0.5", calib=tokens(2, seed=7)[:, :-1])
    assert s.config.model_args.mlp_hidden == 24 and s.model.blocks[0].mlp.proj.weight.shape == (32, 24)


def test_the_random_init_control_reinitialises_only_the_changed_layers():
    from foundry.surgery.transforms import reinit_changed

    cfg = experiment()
    parent = parent_of(cfg)
    s = operate(parent, cfg, "attention", "mqa")
    pooled = s.model.blocks[0].attn.qkv.weight.clone()
    c = reinit_changed(s, parent, cfg, seed=3)
    assert not torch.equal(c.model.blocks[0].attn.qkv.weight, pooled)
    assert float(c.model.blocks[0].attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    torch.testing.assert_close(c.model.blocks[0].mlp.fc.weight, parent.blocks[0].mlp.fc.weight)
    assert "control" in c.config.lineage["surgery"]["method"]
    d = reinit_changed(operate(parent, cfg, "depth", "-1", calib=tokens(2)[:, :-1]), parent, cfg, seed=3)
    assert d.config.model_args.n_layer == 2 and "random" in d.method


# --------------------------------------------------------------------------------------------------
# The command line, on a tiny trained run
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_parent(tmp_path_factory):
    from foundry.train import train
    from train_helpers import tiny_config, write_char_dataset

    root = tmp_path_factory.mktemp("surgery")
    data = write_char_dataset(root / "data", chars=20_000)
    cfg = tiny_config(data, root / "parent", **{"training.max_iters": 10, "training.eval_interval": 10,
                                                "training.sample_tokens": 0})
    train(cfg, quiet=True)
    return root / "parent", data


def test_cli_records_the_cost_and_writes_a_loadable_child(trained_parent, tmp_path, capsys):
    import json

    from foundry.checkpoint import load_run
    from foundry.surgery.__main__ import main

    parent_dir, data = trained_parent
    out = tmp_path / "mqa"
    assert main([str(parent_dir), "attention", "mqa", "--data", str(data), "--out", str(out), "--window", "16",
                 "--calib-tokens", "128", "--heldout-tokens", "256", "--decode-tokens", "4",
                 "--decode-rounds", "1"]) == 0
    rec = json.loads((out / "surgery.json").read_text())
    assert rec["mutation"] == "attention mqa" and rec["before"]["kl"] > 0
    assert rec["before"]["kv_bytes_child"] * 2 == rec["before"]["kv_bytes_parent"]
    assert "KL(parent||child)" in capsys.readouterr().out
    child = load_run(out / "child")
    assert child.config.model_args.kv_heads == 1 and child.config.lineage["surgery"]["mutation"] == "attention mqa"
    assert child.config.lineage["parent"] == str(parent_dir)


def test_cli_refuses_a_bad_healing_budget_before_loading_anything(trained_parent, tmp_path, capsys):
    from foundry.surgery.__main__ import main

    parent_dir, data = trained_parent
    assert main([str(parent_dir), "attention", "mqa", "--data", str(data), "--out", str(tmp_path),
                 "--heal", "tokns=100"]) == 2
    assert "tokens" in capsys.readouterr().err and not (tmp_path / "child").exists()


@pytest.mark.parametrize("heal", ["tokens=2048,batch=4,lr=3e-3,distill=0.7", "tokens=2048,batch=4,lr=1e-2,lora=4"])
def test_cli_heals_the_child_from_its_transferred_weights_through_the_training_loop(trained_parent, tmp_path, heal):
    import json

    import yaml

    from foundry.surgery.__main__ import main

    parent_dir, data = trained_parent
    out = tmp_path / "heal"
    assert main([str(parent_dir), "attention", "mqa", "--data", str(data), "--out", str(out), "--window", "16",
                 "--calib-tokens", "128", "--heldout-tokens", "512", "--decode-tokens", "0", "--heal", heal]) == 0
    rec = json.loads((out / "surgery.json").read_text())
    assert rec["after"]["ppl_child"] < rec["before"]["ppl_child"]
    first = next(json.loads(line) for line in (out / "heal" / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in line)
    assert first["loss"] < math.log(V) - 0.3   # it started from the transferred weights, not a random init
    cfg = yaml.safe_load((out / "heal" / "config.yaml").read_text())
    assert cfg["init_from"] == str(out / "child") and cfg["lineage"]["heal"]["surgery"] == "attention mqa"
    assert cfg["training"]["objective"] == ("distill" if "distill" in heal else "lm")
    assert cfg["lora"]["rank"] == (4 if "lora" in heal else 0)
    exp = yaml.safe_load((out / "experiment.yaml").read_text())
    assert exp["lineage"]["heal"]["tokens"] == rec["heal"]["tokens"] >= 2048


def test_distillation_loss_is_the_weighted_sum_of_cross_entropy_and_kl_to_the_teacher():
    """training.objective distill: (1 - a) CE + a T^2 KL(teacher_T || student_T), checked against the
    formula computed naively per token."""
    import torch.nn.functional as F

    from foundry.trainer.objectives import OBJECTIVES

    cfg = experiment().replace({"training.objective": "distill", "training.distill.teacher": "unused",
                                "training.distill.alpha": 0.3, "training.distill.temperature": 2.0})
    student, teacher = parent_of(cfg, seed=0), parent_of(cfg, seed=1)
    obj = OBJECTIVES.get("distill")(cfg)
    obj.teacher = teacher
    w = tokens(2)
    x, y = w[:, :-1], w[:, 1:]
    with torch.no_grad():
        loss, parts = obj.loss(student, (x, y))
        s, t = student(x).flatten(0, 1) / 2.0, teacher(x).flatten(0, 1) / 2.0
        ce = float(F.cross_entropy(student(x).flatten(0, 1), y.reshape(-1)))
    kl = sum(float((F.softmax(t[i], -1) * (F.log_softmax(t[i], -1) - F.log_softmax(s[i], -1))).sum())
             for i in range(s.shape[0])) / s.shape[0] * 4.0   # naive, token by token, times T^2
    assert float(parts["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(loss) == pytest.approx(0.7 * ce + 0.3 * kl, rel=1e-4)
    obj.teacher = student
    with torch.no_grad():
        assert float(obj.loss(student, (x, y))[1]["kl"]) == pytest.approx(0, abs=1e-5)


def test_sweep_heal_ranks_surgeries_of_a_trained_parent_after_equal_healing(trained_parent, tmp_path):
    """`sweep --heal`: every candidate is a surgery of the base's init_from, healed on the same tokens; the
    baseline is the parent healed alike; the report puts the cost before healing beside the result after."""
    import yaml

    from foundry.sweep.runner import SweepOptions, run_sweep

    parent_dir, data = trained_parent
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"init_from": str(parent_dir), "data": {"path": str(data)},
                                    "training": {"device": "cpu", "num_threads": 1}, "out_dir": "unused"}))
    out = tmp_path / "sw"
    res = run_sweep(SweepOptions(type="attention", variants=["mqa", "sliding_8"], base=str(base), seeds=1,
                                 confirm_seeds=2, out=str(out), store=str(tmp_path / "s.sqlite"), quiet=True,
                                 budget="tokens=512", heal="tokens=512,batch=4,lr=3e-3"))
    assert res["results"]["attention_mqa"]["status"] == "done"
    assert res["results"]["attention_sliding_8"]["status"] == "refused"   # no weight transfer into it
    trial = yaml.safe_load(next((out / "trials" / "attention_mqa").glob("s*/config.yaml")).read_text())
    assert trial["init_from"] == str(out / "surgery" / "attention_mqa" / "child")
    assert trial["lineage"]["heal"]["surgery"] == "attention mqa"
    base_trial = yaml.safe_load(next((out / "trials" / "baseline").glob("s*/config.yaml")).read_text())
    assert base_trial["init_from"] == str(out / "surgery" / "baseline" / "child")
    report = (out / "report.md").read_text()
    assert "## Surgery: cost before healing, result after" in report and "| attention_mqa |" in report


@pytest.mark.real_checkpoint
def test_real_smollm2_transfers_are_exact_where_they_should_be():
    """SmolLM2-135M-Instruct (3 KV heads of 9, head 64, RoPE theta 1e5): repeating its K/V heads to MHA gives
    its logits; the full-rank MHA2MLA conversion gives its attention with RoPE on the kept channels only
    (per head, the 2-norm selection's)."""
    from foundry.surgery.run import load_parent
    from foundry.zoo import ZooError

    try:
        parent = load_parent("smollm2-135m")
    except (ZooError, FileNotFoundError):
        pytest.skip("no smollm2-135m checkpoint (python bench/make_smollm2.py)")
    x = torch.randint(0, 49152, (1, 33), generator=torch.Generator().manual_seed(0))
    s = operate(parent.model, parent.config, "attention", "mha")
    torch.testing.assert_close(logits(s.model, x), logits(parent.model, x), atol=2e-4, rtol=0)
    keep = 16
    calib = torch.randint(0, 49152, (2, 64), generator=torch.Generator().manual_seed(1))
    s = operate(parent.model, parent.config, "attention", "mla", calib=calib,
                overrides={"model_args.mla.kv_rank": 3 * (2 * 64 - keep), "model_args.mla.rope_head_dim": keep})
    h = torch.randn(1, 16, 576)
    with torch.no_grad():
        ref = partial_rope_attention(parent.model.blocks[7].attn, h, s.details["rope_freqs"][7],
                                     parent.model.cfg.rope.theta)
        got = s.model.blocks[7].attn(h, s.model.pos, torch.arange(16))
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
