"""The zoo against transformers: tiny random checkpoints of each architecture saved by transformers, loaded
through load_pretrained(path), exported with save_hf and reloaded by transformers; name resolution, the
named configs' parameter counts, and the errors a user meets."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the zoo tests need the `test` extra (transformers)")
import transformers  # noqa: E402
from hf_utils import CHAT_TEMPLATE, CONFIGS, VOCAB, save_tiny_checkpoint, tiny_hf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from foundry.config import RopeScalingConfig, from_dict  # noqa: E402
from foundry.model import GPT  # noqa: E402
from foundry.zoo import NAMED, ZooError, count_parameters, find, load_pretrained, save_hf  # noqa: E402
from foundry.zoo.load import build_meta  # noqa: E402

KINDS = list(CONFIGS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{kind: (reference transformers model, its saved checkpoint directory)}"""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for kind in KINDS:
        hf = tiny_hf(kind)
        out[kind] = (hf, save_tiny_checkpoint(kind, root / kind, hf=hf))
    return out


def _idx(B=2, T=24):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))


def _mean_kl(ref_logits, logits) -> float:
    """Mean over positions of KL(reference || ours) of the next-token distributions, in float64."""
    p, q = ref_logits.double().log_softmax(-1), logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def _greedy_hf(hf, prompt, n=20):
    hf.generation_config.eos_token_id = None  # exactly n tokens, as foundry's generate without stop ids
    with torch.no_grad():
        return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:].tolist()


def assert_matches(hf, model):
    """fp32 logits within 1e-5, mean KL < 1e-10, and 20 greedy tokens identical (past Mistral's window of 8)."""
    idx = _idx()
    with torch.no_grad():
        ref, got = hf(idx).logits, model(idx)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert _mean_kl(ref, got) < 1e-10
    prompt = _idx(B=1, T=6)
    assert model.generate(prompt, 20, temperature=0)[0] == _greedy_hf(hf, prompt)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_loads_with_transformers_logits_and_greedy_tokens(checkpoints, kind):
    hf, path = checkpoints[kind]
    p = load_pretrained(path, quiet=True)
    assert p.architecture == CONFIGS[kind][1] and p.source == path
    assert_matches(hf, p.model)


@pytest.mark.parametrize("kind", KINDS)
def test_export_reloads_in_transformers_with_equal_logits(checkpoints, kind, tmp_path):
    hf, path = checkpoints[kind]
    out = save_hf(load_pretrained(path, quiet=True), tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(again).__name__ == CONFIGS[kind][1]
    assert_matches(again, load_pretrained(path, quiet=True).model)
    assert_matches(hf, load_pretrained(out, quiet=True).model)


@pytest.mark.parametrize("kind", KINDS)
def test_hf_to_foundry_to_hf_returns_identical_tensors(checkpoints, kind, tmp_path):
    _, path = checkpoints[kind]
    out = save_hf(load_pretrained(path, quiet=True), tmp_path / "out")
    before, after = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    tok_before = json.loads((path / "tokenizer.json").read_text())
    assert json.loads((out / "tokenizer.json").read_text()) == tok_before
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]


def test_sliding_window_is_applied_not_ignored(checkpoints):
    """Mistral's window (8) is shorter than the inputs (24): without it the logits would differ."""
    hf, path = checkpoints["mistral"]
    p = load_pretrained(path, quiet=True)
    assert p.config.attention == "sliding_window" and p.config.sliding_window.window == 8
    wide = GPT(dataclasses.replace(p.config, attention="gqa"))
    wide.load_state_dict(p.model.state_dict())
    with torch.no_grad():
        assert (wide(_idx()) - hf(_idx()).logits).abs().max() > 1e-3


def test_llama3_rope_scaling_is_applied(checkpoints):
    """Without the llama3 frequency scaling the tiny Llama's logits move far beyond the tolerance."""
    hf, path = checkpoints["llama"]
    p = load_pretrained(path, quiet=True)
    assert p.config.rope.scaling.type == "llama3" and p.config.head_dim == 12 and p.config.tie_embeddings
    plain = GPT(dataclasses.replace(p.config, rope=dataclasses.replace(p.config.rope, scaling=RopeScalingConfig()))).eval()
    plain.load_state_dict(p.model.state_dict())
    with torch.no_grad():
        assert (plain(_idx()) - hf(_idx()).logits).abs().max() > 1e-4


def test_sharded_bf16_checkpoint_keeps_its_dtype_and_builds_nothing_random(tmp_path, monkeypatch, capsys):
    hf = tiny_hf("qwen2")
    path = save_tiny_checkpoint("qwen2", tmp_path / "ck", hf=hf, dtype=torch.bfloat16, max_shard_size="40KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    inits = []
    real_normal = torch.nn.init.normal_

    def spy(tensor, *a, **k):
        inits.append(tensor.is_meta)
        return real_normal(tensor, *a, **k)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    p = load_pretrained(path)
    assert inits and all(inits), "weights were initialised off the meta device before loading"
    assert "bfloat16" in capsys.readouterr().err
    assert {t.dtype for t in p.model.parameters()} == {torch.bfloat16}
    ref = load_file(str(path / index["weight_map"]["model.embed_tokens.weight"]))["model.embed_tokens.weight"]
    assert torch.equal(p.model.wte.weight, ref)
    p32 = load_pretrained(path, dtype="float32", quiet=True)
    assert {t.dtype for t in p32.model.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(p32.model(_idx()), hf.to(torch.bfloat16).float()(_idx()).logits, atol=1e-5, rtol=0)


def test_tokenizer_chat_template_and_stop_ids_come_from_the_checkpoint(checkpoints, tmp_path):
    _, path = checkpoints["llama"]
    p = load_pretrained(path, quiet=True)
    assert p.chat_template == CHAT_TEMPLATE and p.stop_ids == [2, 0]
    assert p.tokenizer.decode(p.tokenizer.encode("hello zoo")) == "hello zoo"
    assert p.tokenizer.token_id("eos") == 2
    local = shutil.copytree(path, tmp_path / "ck")
    (local / "chat_template.jinja").write_text("{{ messages }}")
    assert load_pretrained(local, quiet=True).chat_template == "{{ messages }}"


@pytest.mark.parametrize("name,published", [("llama3-8b", 8_030_261_248), ("llama3-1b", 1_235_814_400),
                                            ("mistral-7b", 7_241_732_096), ("qwen2-7b", 7_615_616_512),
                                            ("gpt2", 124_439_808), ("smollm2-135m", 134_515_008),
                                            ("mistral-7b-v0.3", 7_248_023_552)])
def test_named_configs_have_the_published_parameter_counts(name, published):
    assert count_parameters(name) == published


def test_parameter_counts_allocate_nothing():
    from foundry.zoo.load import model_config

    _, cfg = model_config(NAMED["llama3-8b"].hf_config, "llama3-8b")
    model = build_meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert cfg.rope.scaling.type == "llama3" and cfg.kv_heads == 8 and not cfg.tie_embeddings
    m7 = model_config(NAMED["mistral-7b"].hf_config, "m")[1]
    assert m7.attention == "sliding_window" and m7.sliding_window.window == 4096
    assert model_config(NAMED["mistral-7b-v0.3"].hf_config, "m")[1].attention == "gqa"
    q = model_config(NAMED["qwen2-7b"].hf_config, "q")[1]
    assert q.has_bias("qkv") and not q.has_bias("attn_proj") and not q.tie_embeddings


# --------------------------------------------------------------------------------------------------
# Where checkpoints are found
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def places(tmp_path, monkeypatch):
    zoo, hub = tmp_path / "zoo", tmp_path / "hub"
    monkeypatch.setenv("FOUNDRY_ZOO_DIR", str(zoo))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return zoo, hub


def test_names_resolve_in_the_zoo_root_then_the_hub_cache(checkpoints, places):
    zoo, hub = places
    src = checkpoints["llama"][1]
    snap = hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    shutil.copytree(src, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    assert find("smollm2-135m") == snap
    assert find("HuggingFaceTB/SmolLM2-135M-Instruct") == snap
    shutil.copytree(src, zoo / "SmolLM2-135M-Instruct")
    assert find("smollm2-135m") == zoo / "SmolLM2-135M-Instruct"
    shutil.copytree(src, zoo / "smollm2-135m")
    assert find("smollm2-135m") == zoo / "smollm2-135m"
    assert load_pretrained("smollm2-135m", quiet=True).source == zoo / "smollm2-135m"


def test_a_missing_checkpoint_names_every_place_searched_and_the_files(places):
    zoo, hub = places
    with pytest.raises(ZooError) as e:
        find("llama3-1b")
    msg = str(e.value)
    for place in (zoo / "llama3-1b", zoo / "Llama-3.2-1B-Instruct", zoo / "Llama-3.2-1B",
                  hub / "models--meta-llama--Llama-3.2-1B-Instruct", hub / "models--meta-llama--Llama-3.2-1B"):
        assert str(place) in msg
    for f in ("config.json", "safetensors", "tokenizer.json", "nothing is downloaded"):
        assert f in msg


def test_bad_names_and_directories_say_what_is_wrong(tmp_path, places):
    with pytest.raises(ZooError, match="unknown model 'llama3-1c'; did you mean 'llama3-1b'"):
        find("llama3-1c")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ZooError, match=r"missing tokenizer.json, \*.safetensors"):
        find(tmp_path / "half")
    with pytest.raises(ZooError, match="no such checkpoint directory"):
        find(tmp_path / "nowhere")


def test_an_unsupported_architecture_is_named_with_the_supported_list(checkpoints, tmp_path):
    d = shutil.copytree(checkpoints["llama"][1], tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(ZooError, match="unsupported architecture FalconForCausalLM; the zoo supports "
                                       "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel"):
        load_pretrained(d)


def test_a_checkpoint_that_lacks_a_tensor_fails_naming_it(checkpoints, tmp_path):
    from safetensors.torch import save_file

    d = shutil.copytree(checkpoints["qwen2"][1], tmp_path / "ck")
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.layers.1.self_attn.k_proj.bias"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ZooError, match=r"missing 1 tensor.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_pretrained(d)


# --------------------------------------------------------------------------------------------------
# Exporting foundry models
# --------------------------------------------------------------------------------------------------
def _model(base="v2", **kw):
    args = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=VOCAB, **kw)
    torch.manual_seed(0)
    return GPT(from_dict({"base_model": base, "model_args": args}).model_args).eval()


@pytest.mark.parametrize("base,kw,arch", [("v1", {}, "GPT2LMHeadModel"), ("v2", {}, "LlamaForCausalLM"),
                                          ("v2", {"attention": "sliding_window", "sliding_window": {"window": 8}},
                                           "MistralForCausalLM")])
def test_a_foundry_model_exports_to_the_matching_architecture(base, kw, arch, tmp_path):
    model = _model(base, **kw)
    out = save_hf(model, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch
    assert_matches(hf, model)


@pytest.mark.parametrize("kw,message", [
    ({"attention": "mla"}, "attention 'mla' has no Llama equivalent"),
    ({"qk_norm": True}, "qk_norm has no Llama equivalent"),
    ({"norm_placement": "sandwich"}, "norm_placement 'sandwich' has no Llama equivalent"),
    ({"mlp": "geglu"}, "mlp 'geglu' has no Llama equivalent"),
    ({"position": "alibi"}, "position 'alibi' has no Llama equivalent"),
])
def test_export_refuses_what_transformers_cannot_represent(kw, message, tmp_path):
    with pytest.raises(ZooError, match=message):
        save_hf(_model(**kw), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_char_tokenizer_exports_with_the_same_ids(tmp_path):
    from foundry.data import embedded
    from foundry.data.tokenize import CharTokenizer

    text = embedded.load_text()[:20000]
    tok = CharTokenizer().fit(text)
    out = save_hf(_model("v1"), tmp_path / "a", tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text


def test_export_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(ZooError, match="exists and is not empty"):
        save_hf(_model("v1"), tmp_path / "b")


# --------------------------------------------------------------------------------------------------
# Experiments that start from a checkpoint (init_from)
# --------------------------------------------------------------------------------------------------
def test_init_from_takes_the_checkpoint_architecture_and_keeps_training_keys(checkpoints):
    path = checkpoints["llama"][1]
    cfg = from_dict({"init_from": str(path), "model_args": {"block_size": 16, "dropout": 0.1, "n_layer": 2}})
    m = cfg.model_args
    assert (m.n_layer, m.head_dim, m.kv_heads, m.mlp_hidden, m.vocab_size) == (2, 12, 2, 88, VOCAB)
    assert m.rope.scaling.type == "llama3" and m.tie_embeddings and m.position == "rope"
    assert (m.block_size, m.dropout) == (16, 0.1)
    assert from_dict(cfg.to_dict()).model_args == m  # the resolved config reloads as itself


@pytest.mark.parametrize("key,value,message", [
    ("n_layer", 4, "model_args.n_layer: 4 contradicts init_from '.*', whose n_layer is 2"),
    ("rope", {"theta": 500.0}, "model_args.rope.theta: 500.0 contradicts init_from '.*', whose rope.theta is 10000.0"),
    ("attention", "mla", "model_args.attention: 'mla' contradicts init_from '.*', whose attention is 'gqa'"),
    ("block_size", 4096, "model_args.block_size: 4096 exceeds init_from '.*'s 256 positions"),
])
def test_init_from_refuses_a_contradicting_model_arg(checkpoints, key, value, message):
    from foundry.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        from_dict({"init_from": str(checkpoints["llama"][1]), "model_args": {key: value}})


def test_training_starts_from_the_checkpoint_weights_and_tokenizer(checkpoints, tmp_path):
    from foundry.checkpoint import load_run
    from foundry.config import ConfigError
    from foundry.data.prepare import prepare
    from foundry.train import train

    hf, path = checkpoints["qwen2"]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(["the quick brown fox jumps over the lazy dog"] * 40 + ["hello zoo"] * 40))
    prepare([str(text)], str(path), tmp_path / "data", workers=1, log=lambda *a, **k: None)
    base = {"init_from": str(path), "data": {"path": str(tmp_path / "data")}, "out_dir": str(tmp_path / "run"),
            "model_args": {"block_size": 16},
            "training": {"max_iters": 1, "eval_interval": 1, "eval_iters": 1, "batch_size": 2, "learning_rate": 1e-9,
                         "min_lr": 1e-10, "warmup_iters": 0, "device": "cpu", "num_threads": 1, "sample_tokens": 0,
                         "dtype": "float32"}}
    train(from_dict(base), quiet=True)
    run = load_run(tmp_path / "run")
    with torch.no_grad():  # one step at lr 1e-9 leaves the pretrained model in place; a random start would not
        torch.testing.assert_close(run.model(_idx(T=16)), hf(_idx(T=16)).logits, atol=1e-4, rtol=0)
    assert json.loads(run.tokenizer.to_json())["tokenizer"] == json.loads((path / "tokenizer.json").read_text())
    from foundry.zoo.__main__ import main

    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0  # the CLI, from a run directory
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(again).__name__ == "Qwen2ForCausalLM"
    assert_matches(again, run.model)
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    with pytest.raises(ConfigError, match="not tokenized with the base's tokenizer"):
        train(from_dict({**base, "data": {"path": None}, "out_dir": str(tmp_path / "run2")}), quiet=True)


def test_cli_list_and_info_report_what_is_found(checkpoints, places, capsys):
    from foundry.zoo.__main__ import main

    zoo, _ = places
    shutil.copytree(checkpoints["gpt2"][1], zoo / "gpt2")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"gpt2" in out and str(zoo / "gpt2") in out and "8.03B" in out and "not found" in out
    assert main(["info", "gpt2"]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    assert main(["info", "qwen2-7b"]) == 1  # described from the named config, and where it was looked for
    out = capsys.readouterr().out
    assert "7.62B" in out and "models--Qwen--Qwen2-7B-Instruct" in out


def test_the_zoo_example_experiment_resolves_its_checkpoint(checkpoints, places):
    from foundry.config import load_experiment

    zoo, _ = places
    shutil.copytree(checkpoints["llama"][1], zoo / "smollm2-135m")
    exp = Path(__file__).resolve().parents[1] / "experiments" / "zoo_smollm2.yaml"
    cfg = load_experiment(exp, ["model_args.block_size=64"])
    assert cfg.init_from == "smollm2-135m" and cfg.model_args.head_dim == 12 and cfg.model_args.block_size == 64


def test_mutate_accepts_an_init_from_experiment_and_refuses_an_architecture_change(checkpoints, tmp_path):
    import yaml

    from foundry.config import load_experiment
    from foundry.mutate.__main__ import main as mutate

    exp = tmp_path / "ft.yaml"
    exp.write_text(yaml.safe_dump({"init_from": str(checkpoints["mistral"][1]), "model_args": {"block_size": 32},
                                   "out_dir": str(tmp_path / "runs" / "ft")}))
    assert mutate(["lr", "x3", "--from", str(exp), "--out", str(tmp_path / "lr.yaml")]) == 0
    child = load_experiment(tmp_path / "lr.yaml")
    assert child.init_from == str(checkpoints["mistral"][1]) and child.model_args.sliding_window.window == 8
    assert child.training.learning_rate == 3 * load_experiment(exp).training.learning_rate
    assert mutate(["attention", "mla", "--from", str(exp), "--out", str(tmp_path / "mla.yaml")]) != 0
    assert not (tmp_path / "mla.yaml").exists()


def test_writes_to_loaded_weights_never_reach_the_checkpoint_file(checkpoints):
    """Parameters may be memory-mapped from the file; the mapping is copy-on-write."""
    path = checkpoints["mistral"][1] / "model.safetensors"
    before = path.read_bytes()
    p = load_pretrained(path.parent, quiet=True)
    with torch.no_grad():
        for w in p.model.parameters():
            w.add_(1.0)
    del p
    assert path.read_bytes() == before


def test_gpt2_checkpoints_without_the_transformer_prefix_load(checkpoints, tmp_path):
    """OpenAI's GPT-2 files name their tensors h.0.attn.c_attn.weight, wte.weight, ... (no `transformer.`)."""
    from safetensors.torch import save_file

    hf, src = checkpoints["gpt2"]
    d = shutil.copytree(src, tmp_path / "ck")
    sd = load_file(str(d / "model.safetensors"))
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    assert_matches(hf, load_pretrained(d, quiet=True).model)


@pytest.mark.parametrize("args,message", [
    ({"attention": "sliding_window", "sliding_window": {"layers": [8, None, 4]}},
     r"model_args.sliding_window.layers: needs one entry per layer \(n_layer=2\), got 3"),
    ({"attention": "sliding_window", "sliding_window": {"layers": [8, 0]}},
     "model_args.sliding_window.layers: each entry must be a window >= 1 or null"),
    ({"position": "rope", "rope": {"scaling": {"type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0}}},
     "model_args.rope.scaling.low_freq_factor: must be > 0 and below high_freq_factor=1.0"),
    ({"n_embd": 30, "n_head": 4}, "or set head_size"),
])
def test_checkpoint_fields_are_validated(args, message):
    from foundry.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        from_dict({"model_args": {"n_layer": 2, **args}})


def test_explicit_head_size_and_mlp_width_shape_the_model():
    m = from_dict({"base_model": "v2", "model_args": {"n_layer": 1, "n_head": 4, "n_kv_head": 2, "n_embd": 30,
                                                      "head_size": 8, "mlp_hidden_size": 50, "vocab_size": 11,
                                                      "qkv_bias": True}}).model_args
    model = GPT(m)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 30)
    assert model.blocks[0].attn.qkv.bias is not None and model.blocks[0].attn.proj.bias is None
    assert model.blocks[0].attn.proj.weight.shape == (30, 32) and model.blocks[0].mlp.proj.weight.shape == (30, 50)
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 11)


def test_eval_takes_a_checkpoint_directory(checkpoints):
    from foundry.eval.lm import resolve_target

    hf, path = checkpoints["gpt2"]
    model, tok, label = resolve_target(path)
    assert label == str(path) and tok.vocab_size <= VOCAB
    assert_matches(hf, model)
