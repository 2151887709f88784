"""Tiny random Hugging Face reference models and their foundry twins, converted by the zoo's own key maps
(foundry.zoo.load.from_hf_state): the tests hold no second copy of the conversion.

    hf, ours = tiny_pair("llama")                 # transformers model, foundry GPT with the same weights
    path = save_tiny_checkpoint("qwen2", tmp)      # a local checkpoint directory (config, safetensors, tokenizer)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 300  # the test tokenizer's byte-level BPE fits in it (256 bytes + specials + a few merges)

# One tiny config per architecture, each with what the zoo must get right about it
CONFIGS = {
    # llama3 RoPE scaling with a short original context (so all three frequency bands occur in 12-channel
    # heads), explicit head_dim != hidden / heads, GQA, an MLP width that is no multiple of anything, tied head
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)),
    # a sliding window shorter than the test sequences (24 tokens), untied head
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
        sliding_window=8, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
    # q/k/v bias without an output bias, untied head
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, use_sliding_window=False, bos_token_id=1, eos_token_id=2)),
    # per-layer windows: layer 0 global, layer 1 a window of 6 (Qwen2's max_window_layers)
    "qwen2_windows": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=True, use_sliding_window=True, sliding_window=6, max_window_layers=1,
        bos_token_id=1, eos_token_id=2)),
    # learned positions, Conv1D weights, tanh GELU, tied head
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=1, eos_token_id=2)),
}


def tiny_hf(kind: str, seed: int = 0, **overrides):
    """A tiny random transformers model of `kind` (a CONFIGS key), fp32, eval mode; norms and biases are
    randomised too (transformers initialises them to ones and zeros, which would hide a dropped one)."""
    import transformers

    cfg_cls, model_cls, conf = CONFIGS[kind]
    torch.manual_seed(seed)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**conf, **overrides})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return hf


def to_foundry(hf):
    """The foundry twin of a transformers model, through the zoo's key map and config translation."""
    from foundry.zoo.load import from_hf_state

    return from_hf_state({**hf.config.to_dict(), "architectures": [type(hf).__name__]}, hf.state_dict())


def tiny_pair(kind: str, seed: int = 0, **overrides):
    hf = tiny_hf(kind, seed, **overrides)
    return hf, to_foundry(hf)


def tiny_gpt2_pair(seed: int = 0, **kw):
    return tiny_pair("gpt2", seed, **kw)


def tiny_llama_pair(seed: int = 0, **kw):
    return tiny_pair("llama", seed, **kw)


def tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer.json (Hugging Face format) of at most VOCAB tokens with <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog", "hello world, hello zoo", "to be or not to be"] * 20
    tok.train_from_iterator(text, trainer)
    return tok.to_str()


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def save_tiny_checkpoint(kind: str, out: Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                         max_shard_size: str | None = None, hf=None, **overrides) -> Path:
    """Write a tiny random `kind` model (or `hf`) as transformers does (save_pretrained), plus a tokenizer, a
    chat template and a generation config with two stop ids; returns the directory."""
    hf = (hf if hf is not None else tiny_hf(kind, seed, **overrides)).to(dtype)
    out = Path(out)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf.save_pretrained(out, **kw)
    (out / "tokenizer.json").write_text(tiny_tokenizer_json())
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
    return out
