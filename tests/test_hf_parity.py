"""Differential tests: each architecture the zoo converts equals its Hugging Face reference (fp32, atol 1e-5):
GPT-2 (v1-style), Llama with llama3 RoPE scaling and a tied head, Mistral with a sliding window shorter than
the inputs, Qwen2 with q/k/v bias and an untied head. The conversion is the zoo's (tests/hf_utils.py)."""
import pytest
import torch

pytest.importorskip("transformers", reason="the parity tests need the `test` extra (transformers)")
from hf_utils import VOCAB, tiny_pair  # noqa: E402

ATOL = 1e-5
PAIRS = {"gpt2": lambda: tiny_pair("gpt2"), "llama": lambda: tiny_pair("llama"),
         "mistral": lambda: tiny_pair("mistral"), "qwen2": lambda: tiny_pair("qwen2"),
         "gpt2-exact-gelu": lambda: tiny_pair("gpt2", activation_function="gelu")}


def _inputs(B=3, T=24):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", PAIRS)
def test_logits_match_reference(name):
    hf, ours = PAIRS[name]()
    idx = _inputs()
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", PAIRS)
def test_kv_cache_generation_matches_reference(name):
    hf, ours = PAIRS[name]()
    idx = _inputs(B=1, T=5)
    with torch.no_grad():
        ref = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    got = ours.generate(idx, 12, temperature=0)[0]
    assert got == ref


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("where", ["attn", "mlp", "norm", "embed"])
def test_parity_check_catches_a_perturbed_weight(name, where):
    """The comparison is sensitive: nudging any one weight family breaks it."""
    hf, ours = PAIRS[name]()
    key = {"attn": "blocks.1.attn.qkv.weight", "mlp": "blocks.0.mlp.proj.weight",
           "norm": "blocks.0.norm2.weight", "embed": "wte.weight"}[where]
    idx = _inputs()
    with torch.no_grad():
        w = dict(ours.named_parameters())[key]
        if where == "embed":
            w[idx[0, 0], 3] += 1e-2  # a row the inputs actually use
        elif where == "attn":
            w[-1, 3] += 1e-2  # a value row: the output moves with it whatever the attention pattern
        else:
            w.view(-1)[3] += 1e-2
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff > ATOL, f"perturbing {key} went unnoticed (max diff {diff})"
