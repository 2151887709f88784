"""Test-only bridges to Hugging Face reference models: build a tiny random HF model and a foundry GPT
holding the same weights. (The zoo's key maps will live in foundry.zoo; this is the reference side of tests.)"""
from __future__ import annotations

import torch

from foundry.config import from_dict
from foundry.model import GPT


def gpt2_to_foundry(hf) -> GPT:
    """Copy an HF GPT2LMHeadModel into a foundry v1 GPT. HF's Conv1D stores weights (in, out): transpose."""
    c = hf.config
    cfg = from_dict({"base_model": "v1", "model_args": dict(
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions, vocab_size=c.vocab_size,
        bias=True, norm_eps=c.layer_norm_epsilon,
        mlp={"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}[c.activation_function])}).model_args
    model = GPT(cfg)
    sd = hf.state_dict()
    new = {"wte.weight": sd["transformer.wte.weight"], "pos.wpe.weight": sd["transformer.wpe.weight"],
           "norm_f.weight": sd["transformer.ln_f.weight"], "norm_f.bias": sd["transformer.ln_f.bias"]}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            new[b + ours + ".weight"] = sd[h + theirs + ".weight"]
            new[b + ours + ".bias"] = sd[h + theirs + ".bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            new[b + ours + ".weight"] = sd[h + theirs + ".weight"].t()
            new[b + ours + ".bias"] = sd[h + theirs + ".bias"]
    new["lm_head.weight"] = new["wte.weight"]
    model.load_state_dict(new, strict=True)
    return model.eval()


def llama_to_foundry(hf) -> GPT:
    """Copy an HF LlamaForCausalLM into a foundry v2 GPT (same rotate-half RoPE layout, so no permutation)."""
    c = hf.config
    cfg = from_dict({"base_model": "v2", "model_args": dict(
        n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads,
        n_embd=c.hidden_size, block_size=c.max_position_embeddings, vocab_size=c.vocab_size,
        attention="gqa" if c.num_key_value_heads < c.num_attention_heads else "mha",
        mlp_ratio=c.intermediate_size / c.hidden_size, mlp_multiple_of=1, norm_eps=c.rms_norm_eps,
        tie_embeddings=bool(c.tie_word_embeddings), rope={"theta": float(_rope_theta(c))})}).model_args
    assert cfg.mlp_hidden == c.intermediate_size, (cfg.mlp_hidden, c.intermediate_size)
    model = GPT(cfg)
    sd = hf.state_dict()
    new = {"wte.weight": sd["model.embed_tokens.weight"], "norm_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(c.num_hidden_layers):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        new[b + "norm1.weight"] = sd[h + "input_layernorm.weight"]
        new[b + "norm2.weight"] = sd[h + "post_attention_layernorm.weight"]
        new[b + "attn.qkv.weight"] = torch.cat([sd[h + f"self_attn.{p}_proj.weight"] for p in "qkv"], dim=0)
        new[b + "attn.proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        new[b + "mlp.fc.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]], dim=0)
        new[b + "mlp.proj.weight"] = sd[h + "mlp.down_proj.weight"]
    model.load_state_dict(new, strict=True)
    return model.eval()


def _rope_theta(c) -> float:
    theta = getattr(c, "rope_theta", None)
    if theta is None:  # newer transformers keep it in rope_parameters
        params = getattr(c, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    return theta


def tiny_gpt2_pair(seed: int = 0, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, activation_function="gelu_new")
    conf.update(kw)
    hf = GPT2LMHeadModel(GPT2Config(**conf)).eval()
    return hf, gpt2_to_foundry(hf)


def tiny_llama_pair(seed: int = 0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = dict(vocab_size=97, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    conf.update(kw)
    hf = LlamaForCausalLM(LlamaConfig(**conf)).eval()
    with torch.no_grad():  # HF zero-inits nothing that matters here, but make norms non-trivial too
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return hf, llama_to_foundry(hf)
