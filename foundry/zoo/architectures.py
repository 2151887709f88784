"""Hugging Face architectures the zoo reads and writes: per architecture one config translation and one key map.

This is the only place where Hugging Face names appear (config.json fields, state-dict names). It imports no
torch: a key map is data (which foundry tensor comes from which Hugging Face tensors, and how), executed by
foundry/zoo/convert.py; a config translation is a function between config.json dicts and model_args dicts.

    arch = ARCHITECTURES["LlamaForCausalLM"]
    model_args = arch.from_hf(json.load(open("config.json")))     # -> a model_args dict
    hf = arch.to_hf(model.cfg)                                      # -> a config.json dict
    arch.refusals(model.cfg)                                        # components transformers cannot represent

Key-map rules (`Rule`): `ours` is a foundry name with "{i}" for the layer; `theirs` one or more Hugging Face
names. `copy` moves a tensor as it is; `cat` concatenates several along dim 0 (q/k/v into the fused qkv,
gate/up into the fused gated fc) and splits them back by `split` on export; `transpose` is GPT-2's Conv1D,
which stores (in, out) where nn.Linear stores (out, in). Hugging Face's RoPE is the rotate-half layout that
foundry's position.apply_rope uses too, so q and k need no permutation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from foundry.config import ModelConfig


class ZooError(ValueError):
    """A checkpoint or model the zoo cannot use; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    op: str = "copy"                                             # copy | cat | transpose
    split: Optional[Callable[[ModelConfig], list[int]]] = None   # cat: row counts of each part, for export


def _qkv_rows(c: ModelConfig) -> list[int]:
    return [c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim]


def _gate_up_rows(c: ModelConfig) -> list[int]:
    return [c.mlp_hidden, c.mlp_hidden]


def _llama_keys() -> tuple[Rule, ...]:
    L = "model.layers.{i}."
    qkv = lambda s: tuple(L + f"self_attn.{p}_proj.{s}" for p in "qkv")  # noqa: E731
    return (
        Rule("wte.weight", ("model.embed_tokens.weight",)),
        Rule("norm_f.weight", ("model.norm.weight",)),
        Rule("lm_head.weight", ("lm_head.weight",)),
        Rule("blocks.{i}.norm1.weight", (L + "input_layernorm.weight",)),
        Rule("blocks.{i}.norm2.weight", (L + "post_attention_layernorm.weight",)),
        Rule("blocks.{i}.attn.qkv.weight", qkv("weight"), "cat", _qkv_rows),
        Rule("blocks.{i}.attn.qkv.bias", qkv("bias"), "cat", _qkv_rows),
        Rule("blocks.{i}.attn.proj.weight", (L + "self_attn.o_proj.weight",)),
        Rule("blocks.{i}.attn.proj.bias", (L + "self_attn.o_proj.bias",)),
        Rule("blocks.{i}.mlp.fc.weight", (L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"), "cat", _gate_up_rows),
        Rule("blocks.{i}.mlp.fc.bias", (L + "mlp.gate_proj.bias", L + "mlp.up_proj.bias"), "cat", _gate_up_rows),
        Rule("blocks.{i}.mlp.proj.weight", (L + "mlp.down_proj.weight",)),
        Rule("blocks.{i}.mlp.proj.bias", (L + "mlp.down_proj.bias",)),
    )


def _gpt2_keys() -> tuple[Rule, ...]:
    H = "transformer.h.{i}."
    rules = [
        Rule("wte.weight", ("transformer.wte.weight",)),
        Rule("pos.wpe.weight", ("transformer.wpe.weight",)),
        Rule("norm_f.weight", ("transformer.ln_f.weight",)),
        Rule("norm_f.bias", ("transformer.ln_f.bias",)),
        Rule("lm_head.weight", ("lm_head.weight",)),
    ]
    for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
        rules += [Rule(f"blocks.{{i}}.{ours}.{s}", (H + f"{theirs}.{s}",)) for s in ("weight", "bias")]
    for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                         ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
        rules += [Rule(f"blocks.{{i}}.{ours}.weight", (H + f"{theirs}.weight",), "transpose"),
                  Rule(f"blocks.{{i}}.{ours}.bias", (H + f"{theirs}.bias",))]
    return tuple(rules)


# --------------------------------------------------------------------------------------------------
# Config translation helpers
# --------------------------------------------------------------------------------------------------
def _rope_from_hf(c: dict, arch: str) -> dict:
    """rope {theta, scaling} from either spelling: rope_theta + rope_scaling (transformers 4, the published
    config.json files) or rope_parameters (transformers 5)."""
    params = c.get("rope_parameters") or {}
    theta = c.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = c.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    out: dict = {"theta": float(theta)}
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ZooError(f"{arch}: RoPE scaling {kind!r} is not supported (foundry implements 'llama3'); "
                           f"rope_scaling = {scaling}")
        out["scaling"] = {"type": "llama3", "factor": float(scaling["factor"]),
                          "low_freq_factor": float(scaling.get("low_freq_factor", 1.0)),
                          "high_freq_factor": float(scaling.get("high_freq_factor", 4.0)),
                          "original_max_positions": int(scaling.get("original_max_position_embeddings", 8192))}
    if params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ZooError(f"{arch}: partial rotary embeddings are not supported by the zoo's {arch} translation")
    return out


def _rope_to_hf(m: ModelConfig) -> dict:
    out: dict = {"rope_theta": m.rope.theta}
    s = m.rope.scaling
    if s.type == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_positions}
    return out


def _windows_model_args(windows: list[Optional[int]]) -> dict:
    """attention and sliding_window options for per-layer windows (None = global layer)."""
    if all(w is None for w in windows):
        return {}
    if len(set(windows)) == 1:
        return {"attention": "sliding_window", "sliding_window": {"window": windows[0], "pattern": "S"}}
    return {"attention": "sliding_window", "sliding_window": {"window": max(w for w in windows if w), "layers": windows}}


def layer_windows(m: ModelConfig) -> list[Optional[int]]:
    """Each layer's attention window, None = global."""
    if m.attention != "sliding_window":
        return [None] * m.n_layer
    return [m.sliding_window.layer_window(i) for i in range(m.n_layer)]


def _decoder_common(c: dict, arch: str, eps_default: float) -> dict:
    """model_args shared by the Llama-family decoders (Llama, Mistral, Qwen2)."""
    act = c.get("hidden_act", "silu")
    if act != "silu":
        raise ZooError(f"{arch}: hidden_act {act!r} is not supported (foundry's swiglu is the SiLU gate)")
    n_head = c["num_attention_heads"]
    n_kv = c.get("num_key_value_heads") or n_head
    hidden = c["hidden_size"]
    head = c.get("head_dim") or hidden // n_head
    return dict(
        n_layer=c["num_hidden_layers"], n_head=n_head, n_kv_head=n_kv, n_embd=hidden,
        head_size=None if head * n_head == hidden else head,
        block_size=c.get("max_position_embeddings", 2048), vocab_size=c["vocab_size"],
        attention="gqa" if n_kv < n_head else "mha", position="rope", norm="rmsnorm", norm_placement="pre",
        mlp="swiglu", mlp_hidden_size=c["intermediate_size"], mlp_multiple_of=1,
        norm_eps=float(c.get("rms_norm_eps", eps_default)), bias=False,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)), rope=_rope_from_hf(c, arch),
        dropout=float(c.get("attention_dropout", 0.0)))


def _decoder_hf(m: ModelConfig, arch: str, model_type: str) -> dict:
    return {"architectures": [arch], "model_type": model_type, "vocab_size": m.vocab_size,
            "hidden_size": m.n_embd, "intermediate_size": m.mlp_hidden, "num_hidden_layers": m.n_layer,
            "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim,
            "hidden_act": "silu", "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps,
            "tie_word_embeddings": m.tie_embeddings, "attention_dropout": m.dropout, **_rope_to_hf(m)}


def _refusals(m: ModelConfig, name: str, allowed: dict[str, tuple[str, ...]]) -> list[str]:
    """What `name` cannot represent, each as '<component> has no <name> equivalent': components outside
    `allowed` (family -> the names it has), and the options no supported architecture has."""
    out = [f"{fam} {getattr(m, fam)!r} has no {name} equivalent (it has {', '.join(ok)})"
           for fam, ok in allowed.items() if getattr(m, fam) not in ok]
    if m.qk_norm:
        out.append(f"qk_norm has no {name} equivalent")
    if m.attn_softcap:
        out.append(f"attn_softcap {m.attn_softcap} has no {name} equivalent")
    if m.position == "rope" and m.rope.fraction != 1.0:
        out.append(f"rope.fraction {m.rope.fraction} has no {name} equivalent (every channel is rotated)")
    return out


_DECODER = {"position": ("rope",), "norm": ("rmsnorm",), "mlp": ("swiglu",), "norm_placement": ("pre",)}


# --------------------------------------------------------------------------------------------------
# The architectures
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    name: str                                   # the `architectures` entry of config.json
    family: str                                 # how a user calls it: "Llama", "Mistral", ...
    keys: tuple[Rule, ...]
    from_hf: Callable[[dict], dict]             # config.json dict -> model_args dict
    to_hf: Callable[[ModelConfig], dict]        # ModelConfig -> config.json dict
    refusals: Callable[[ModelConfig], list[str]]  # [] when the model is representable
    ignored: tuple[str, ...] = ()               # regexes of checkpoint tensors that hold no weights
    optional_prefix: str = ""                   # a prefix some checkpoints leave out of their names
    _compiled: list = field(default_factory=list, compare=False, repr=False)

    def rule_for(self, ours: str) -> tuple[Rule, str] | None:
        """The rule producing foundry tensor `ours`, and the layer index it matched ('' for none)."""
        if not self._compiled:
            for r in self.keys:
                self._compiled.append((re.compile(re.escape(r.ours).replace(r"\{i\}", r"(\d+)") + "$"), r))
        for pattern, r in self._compiled:
            hit = pattern.match(ours)
            if hit:
                return r, (hit.group(1) if hit.groups() else "")
        return None


def _llama_from_hf(c: dict) -> dict:
    m = _decoder_common(c, "LlamaForCausalLM", 1e-6)
    bias = bool(c.get("attention_bias", False))
    return {**m, "qkv_bias": bias, "attn_proj_bias": bias, "mlp_bias": bool(c.get("mlp_bias", False))}


def _llama_to_hf(m: ModelConfig) -> dict:
    return {**_decoder_hf(m, "LlamaForCausalLM", "llama"), "attention_bias": m.has_bias("qkv"),
            "mlp_bias": m.has_bias("mlp")}


def _llama_refusals(m: ModelConfig) -> list[str]:
    out = _refusals(m, "Llama", {"attention": ("mha", "gqa"), **_DECODER})
    if m.has_bias("qkv") != m.has_bias("attn_proj"):
        out.append(f"qkv_bias={m.has_bias('qkv')} with attn_proj_bias={m.has_bias('attn_proj')} has no Llama "
                   f"equivalent (its attention_bias covers q, k, v and o together; Qwen2 has q/k/v bias only)")
    return out


def _mistral_from_hf(c: dict) -> dict:
    m = _decoder_common(c, "MistralForCausalLM", 1e-6)
    w = c.get("sliding_window", 4096)  # MistralConfig's default window; null in v0.2 and later
    return {**m, "qkv_bias": False, "attn_proj_bias": False, "mlp_bias": False,
            **_windows_model_args([w] * m["n_layer"] if w else [None] * m["n_layer"])}


def _mistral_to_hf(m: ModelConfig) -> dict:
    windows = layer_windows(m)
    return {**_decoder_hf(m, "MistralForCausalLM", "mistral"), "sliding_window": windows[0]}


def _mistral_refusals(m: ModelConfig) -> list[str]:
    out = _refusals(m, "Mistral", {"attention": ("mha", "gqa", "sliding_window"), **_DECODER})
    if len(set(layer_windows(m))) > 1:
        out.append(f"per-layer sliding windows {layer_windows(m)} have no Mistral equivalent (one window for "
                   f"every layer, or none)")
    if any(m.has_bias(p) for p in ("qkv", "attn_proj", "mlp")):
        out.append("linear biases have no Mistral equivalent (it has none)")
    return out


def _qwen2_windows(c: dict) -> list[Optional[int]]:
    n = c["num_hidden_layers"]
    w = c.get("sliding_window") if c.get("use_sliding_window", False) else None
    types = c.get("layer_types")
    if types:  # transformers 5 writes the per-layer choice explicitly
        return [w if t == "sliding_attention" else None for t in types]
    first = c.get("max_window_layers", 28)
    return [w if (w and i >= first) else None for i in range(n)]


def _qwen2_from_hf(c: dict) -> dict:
    m = _decoder_common(c, "Qwen2ForCausalLM", 1e-6)
    return {**m, "qkv_bias": True, "attn_proj_bias": False, "mlp_bias": False,
            **_windows_model_args(_qwen2_windows(c))}


def _qwen2_to_hf(m: ModelConfig) -> dict:
    windows = layer_windows(m)
    sliding = [i for i, w in enumerate(windows) if w is not None]
    out = {**_decoder_hf(m, "Qwen2ForCausalLM", "qwen2"), "use_sliding_window": bool(sliding),
           "sliding_window": windows[sliding[0]] if sliding else None,
           "max_window_layers": sliding[0] if sliding else m.n_layer}
    out["layer_types"] = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    return out


def _qwen2_refusals(m: ModelConfig) -> list[str]:
    out = _refusals(m, "Qwen2", {"attention": ("mha", "gqa", "sliding_window"), **_DECODER})
    windows = layer_windows(m)
    sliding = [i for i, w in enumerate(windows) if w is not None]
    if sliding and (sliding != list(range(sliding[0], m.n_layer)) or len({windows[i] for i in sliding}) > 1):
        out.append(f"per-layer sliding windows {windows} have no Qwen2 equivalent (one window, on the layers "
                   f"from max_window_layers on)")
    if not (m.has_bias("qkv") and not m.has_bias("attn_proj") and not m.has_bias("mlp")):
        out.append(f"biases qkv={m.has_bias('qkv')}, attn_proj={m.has_bias('attn_proj')}, mlp={m.has_bias('mlp')} "
                   f"have no Qwen2 equivalent (q/k/v have a bias, the output and MLP none)")
    return out


GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _gpt2_from_hf(c: dict) -> dict:
    act = c.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise ZooError(f"GPT2LMHeadModel: activation_function {act!r} is not supported "
                       f"(supported: {', '.join(GPT2_ACTIVATIONS)})")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("reorder_and_upcast_attn", False)):
        if c.get(key, ok) != ok:
            raise ZooError(f"GPT2LMHeadModel: {key}={c[key]} is not supported (foundry's attention assumes {ok})")
    n_embd = c.get("n_embd", 768)
    inner = c.get("n_inner")
    return dict(n_layer=c.get("n_layer", 12), n_head=c.get("n_head", 12), n_embd=n_embd,
                block_size=c.get("n_positions", 1024), vocab_size=c.get("vocab_size", 50257),
                attention="mha", position="learned", norm="layernorm", norm_placement="pre",
                mlp=GPT2_ACTIVATIONS[act], mlp_hidden_size=inner if inner and inner != 4 * n_embd else None,
                mlp_multiple_of=1, norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), bias=True,
                tie_embeddings=bool(c.get("tie_word_embeddings", True)), dropout=float(c.get("resid_pdrop", 0.1)))


def _gpt2_to_hf(m: ModelConfig) -> dict:
    act = "gelu_new" if m.mlp == "gelu_tanh" else "gelu"
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
            "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
            "n_inner": m.mlp_hidden, "activation_function": act, "layer_norm_epsilon": m.norm_eps,
            "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
            "tie_word_embeddings": m.tie_embeddings, "scale_attn_weights": True}


def _gpt2_refusals(m: ModelConfig) -> list[str]:
    out = _refusals(m, "GPT-2", {"attention": ("mha",), "position": ("learned",), "norm": ("layernorm",),
                                 "mlp": ("gelu", "gelu_tanh"), "norm_placement": ("pre",)})
    if m.kv_heads != m.n_head:
        out.append(f"{m.kv_heads} KV heads for {m.n_head} query heads have no GPT-2 equivalent (one each)")
    if m.head_dim * m.n_head != m.n_embd:
        out.append(f"head_size {m.head_dim} has no GPT-2 equivalent (heads are n_embd / n_head wide)")
    if not all(m.has_bias(p) for p in ("qkv", "attn_proj", "mlp")) or not m.bias:
        out.append("a model without biases has no GPT-2 equivalent (every Linear and LayerNorm has one)")
    return out


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("LlamaForCausalLM", "Llama", _llama_keys(), _llama_from_hf, _llama_to_hf, _llama_refusals,
                 ignored=(r".*rotary_emb\.inv_freq$",)),
    Architecture("MistralForCausalLM", "Mistral", _llama_keys(), _mistral_from_hf, _mistral_to_hf, _mistral_refusals,
                 ignored=(r".*rotary_emb\.inv_freq$",)),
    Architecture("Qwen2ForCausalLM", "Qwen2", _llama_keys(), _qwen2_from_hf, _qwen2_to_hf, _qwen2_refusals,
                 ignored=(r".*rotary_emb\.inv_freq$",)),
    Architecture("GPT2LMHeadModel", "GPT-2", _gpt2_keys(), _gpt2_from_hf, _gpt2_to_hf, _gpt2_refusals,
                 ignored=(r".*\.attn\.bias$", r".*\.attn\.masked_bias$"), optional_prefix="transformer."),
)}


def architecture_of(hf_config: dict, where: str = "config.json") -> Architecture:
    """The supported architecture a config.json names, or a ZooError naming it and the supported list."""
    names = hf_config.get("architectures") or []
    for n in names:
        if n in ARCHITECTURES:
            return ARCHITECTURES[n]
    got = ", ".join(names) if names else f"none (model_type {hf_config.get('model_type')!r})"
    raise ZooError(f"{where}: unsupported architecture {got}; the zoo supports {', '.join(ARCHITECTURES)}")


def choose_architecture(m: ModelConfig, name: str | None = None) -> Architecture:
    """The architecture to export `m` as: `name` if given, else the one whose components match (learned
    positions: GPT-2; per-layer windows or q/k/v-only bias: Qwen2; one window: Mistral; else Llama). A model
    it cannot represent raises a ZooError naming every component that has no equivalent."""
    if name is not None:
        if name not in ARCHITECTURES:
            raise ZooError(f"unknown architecture {name!r}; the zoo supports {', '.join(ARCHITECTURES)}")
        arch = ARCHITECTURES[name]
    elif m.position == "learned":
        arch = ARCHITECTURES["GPT2LMHeadModel"]
    else:
        windows = [w for w in layer_windows(m) if w is not None]
        qkv_only = m.has_bias("qkv") and not m.has_bias("attn_proj")
        if qkv_only or (windows and len(windows) < m.n_layer):
            arch = ARCHITECTURES["Qwen2ForCausalLM"]
        elif windows:
            arch = ARCHITECTURES["MistralForCausalLM"]
        else:
            arch = ARCHITECTURES["LlamaForCausalLM"]
    problems = arch.refusals(m)
    if problems:
        raise ZooError(f"cannot export as {arch.name}: " + "; ".join(problems))
    return arch
