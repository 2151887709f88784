"""Experiment config: a typed, frozen tree that mirrors the module tree; YAML is only its serialisation.

This module imports no torch, so loading, validating, mutating and listing are instant. Loading is strict:
an unknown key fails naming the file, the key path and the closest valid key; a wrong type, an out-of-range
value or an inconsistent shape fails with the reason, before any model is built.

    cfg = load_experiment("experiments/baseline.yaml", overrides=["training.max_iters=20"])
    cfg.model_args.n_embd, cfg.training.learning_rate, cfg.to_dict()

Layout (see docs/architecture.md):
    base_model: v1 | v2            preset that fills model_args defaults (explicit keys win)
    model_args: ModelConfig        sizes, component names (strings) and each variant's typed options
    training:   TrainingConfig     optimiser, schedule, loss, device, distribution
    data:       DataConfig         which token stream (embedded default, or a prepared directory)
    eval:       EvalConfig         which tasks rank a run
    out_dir, plugins, lineage
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from foundry import catalog
from foundry.registry import closest, suggest
from foundry.safeio import write_text_atomic  # noqa: F401 (re-exported; full disks named there)


class FrozenDict(dict):
    """A dict that refuses changes (a config's mappings); still a dict to json, isinstance, pickle and copy."""

    def _refuse(self, *a, **k):
        raise TypeError("a config's mappings are frozen; make a changed copy with cfg.replace({...})")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


# yaml.safe_dump writes a config's frozen mappings (e.g. a copy of its lineage) as plain mappings
yaml.SafeDumper.add_representer(FrozenDict, yaml.representer.SafeRepresenter.represent_dict)


class _Frozen:
    """A frozen dataclass whose lists and mappings are frozen too: lists become tuples and mappings
    FrozenDicts, all the way down, so `cfg.eval.tasks.append(...)` or `cfg.lineage["x"] = ...` fails instead
    of changing a config that was validated and hashed."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return FrozenDict({k: _freeze(x) for k, x in v.items()})
    return v


def _thaw(v):
    """Plain lists and dicts again (for YAML, JSON and edits of a copy)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _thaw(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    return v


class ConfigError(ValueError):
    """A config that cannot be used; the message names where (file, key path) and what to do."""


# --------------------------------------------------------------------------------------------------
# Component names: read from the variant classes by foundry.catalog (no table to keep in step, no torch).
# --------------------------------------------------------------------------------------------------
BUILTIN_COMPONENTS: dict[str, tuple[str, ...]] = catalog.builtin_names()
NORM_PLACEMENTS = ("pre", "post", "sandwich")
GATED_MLPS = ("swiglu", "glu", "reglu", "geglu")


# --------------------------------------------------------------------------------------------------
# Per-variant options. Each block is always present (defaults) so a mutation is one string away;
# only the block of the chosen variant is read by the model.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RopeScalingConfig:
    """RoPE frequency scaling for contexts longer than pretraining. `llama3` (Llama 3.1, Meta 2024): rotations
    whose wavelength exceeds original_max_positions / low_freq_factor turn `factor` x slower, those shorter than
    original_max_positions / high_freq_factor are kept, and the band between is interpolated linearly in
    original_max_positions / wavelength. `none` leaves the frequencies as theta gives them."""
    type: Literal["none", "llama3"] = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def check(self, p: str) -> None:
        _require(self.factor > 0, p + ".factor", "must be > 0")
        _require(0 < self.low_freq_factor < self.high_freq_factor, p + ".low_freq_factor",
                 f"must be > 0 and below high_freq_factor={self.high_freq_factor} (got {self.low_freq_factor})")
        _require(self.original_max_positions >= 1, p + ".original_max_positions", "must be >= 1")


@dataclass(frozen=True)
class RopeConfig:
    """RoPE (Su et al. 2021). `fraction` < 1 rotates only the first part of each head (partial rotary);
    `scaling` stretches the low frequencies for long contexts (Llama 3.1)."""
    theta: float = 10000.0
    fraction: float = 1.0
    scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)

    def check(self, p: str) -> None:
        _require(self.theta > 0, p + ".theta", "must be > 0")
        _require(0 < self.fraction <= 1, p + ".fraction", "must be in (0, 1]")
        self.scaling.check(p + ".scaling")


@dataclass(frozen=True)
class HybridConfig:
    """RoPE plus an additive attention bias: `learned` (a trainable relative bias per head) or `alibi`."""
    bias: Literal["learned", "alibi"] = "alibi"


@dataclass(frozen=True)
class SlidingWindowConfig(_Frozen):
    """Local attention over the last `window` tokens. `pattern` is cycled over layers: S = sliding, L = global.
    `layers`, when not empty, gives each layer its own window instead (n_layer entries, each a window >= 1 or
    null for global attention), as checkpoints that mix window sizes per layer need (Qwen2's max_window_layers)."""
    window: int = 128
    pattern: str = "S"
    layers: list = field(default_factory=list)

    def layer_window(self, layer_idx: int) -> Optional[int]:
        """The window of layer `layer_idx`, None for a global layer."""
        if self.layers:
            return self.layers[layer_idx]
        return None if self.pattern[layer_idx % len(self.pattern)] == "L" else self.window

    def check(self, p: str) -> None:
        _require(self.window >= 1, p + ".window", "must be >= 1")
        _require(all(w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 1) for w in self.layers),
                 p + ".layers", f"each entry must be a window >= 1 or null (global), got {self.layers}")
        _require(bool(self.pattern) and set(self.pattern) <= {"S", "L"}, p + ".pattern",
                 f"must be a non-empty string of S (sliding) and L (global) letters, got {self.pattern!r}")


@dataclass(frozen=True)
class BlockSparseConfig:
    """Block-sparse causal attention: each query block sees its `local_blocks` nearest blocks plus the first
    `global_blocks` blocks of the sequence (BigBird/Longformer-style local + global)."""
    block: int = 16
    local_blocks: int = 2
    global_blocks: int = 1

    def check(self, p: str) -> None:
        _require(self.block >= 1, p + ".block", "must be >= 1")
        _require(self.local_blocks >= 1, p + ".local_blocks", "must be >= 1 (a block must see itself)")
        _require(self.global_blocks >= 0, p + ".global_blocks", "must be >= 0")


@dataclass(frozen=True)
class StridedConfig:
    """Sparse Transformer patterns (Child et al. 2019). `strided`: attend to the last `stride` tokens and to
    every `stride`-th token before; `fixed`: attend within the current block of `stride` and to the last
    `summary` positions of every earlier block."""
    mode: Literal["strided", "fixed"] = "strided"
    stride: int = 16
    summary: int = 1

    def check(self, p: str) -> None:
        _require(self.stride >= 1, p + ".stride", "must be >= 1")
        _require(1 <= self.summary <= self.stride, p + ".summary", "must be in [1, stride]")


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2, 2024): K/V come from a `kv_rank` latent; a decoupled RoPE key of
    `rope_head_dim` is shared across heads. The KV cache stores the latent plus the RoPE key only.
    `q_rank` 0 means queries are not compressed. `rope_head_dim` None: a third of the head size, rounded down
    to even (DeepSeek-V2's 64 of 192); it is used only with a rotary position (rope, hybrid).
    `rope_heads` RoPE keys of rope_head_dim each, every one shared by n_head / rope_heads consecutive query heads
    (1 = DeepSeek-V2); `latent_norm` RMS-normalises the latent (DeepSeek-V2). A model converted from MHA/GQA
    (foundry.surgery, MHA2MLA) keeps one rotated key per parent KV head and has no latent norm.
    `rope_select` None: the RoPE keys turn at theta^(-2i/rope_head_dim) (DeepSeek-V2). "high" | "norm": each
    key (and its queries) turns at its own rope_head_dim/2 of the rope config's frequencies (head_dim x
    rope.fraction channels at rope.theta, rope.scaling: the parent's rotation), chosen per layer and key and
    stored with the weights; foundry.surgery picks them as MHA2MLA: "high" the highest frequencies (S_high),
    "norm" those with the largest query x key 2-norm on calibration text (S_2-norm, its default)."""
    kv_rank: int = 32
    q_rank: int = 0
    rope_head_dim: Optional[int] = None
    rope_heads: int = 1
    latent_norm: bool = True
    rope_select: Optional[str] = None

    def rope_dim(self, head_dim: int) -> int:
        if self.rope_head_dim is not None:
            return self.rope_head_dim
        return max(2, head_dim // 3 // 2 * 2)

    def check(self, p: str) -> None:
        _require(self.kv_rank >= 1, p + ".kv_rank", "must be >= 1")
        _require(self.q_rank >= 0, p + ".q_rank", "must be >= 0 (0 = no query compression)")
        _require(self.rope_head_dim is None or (self.rope_head_dim >= 0 and self.rope_head_dim % 2 == 0),
                 p + ".rope_head_dim", "must be an even number >= 0, or null (a third of the head size)")
        _require(self.rope_heads >= 1, p + ".rope_heads", "must be >= 1 (1 = one RoPE key shared by all heads)")
        _require(self.rope_select in (None, "high", "norm"), p + ".rope_select",
                 "must be null (DeepSeek-V2's frequencies), 'high' or 'norm' (per-key frequencies of the rope "
                 "config, picked by foundry.surgery)")


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts (Shazeer et al. 2017; Switch, Fedus et al. 2021): top-k routing with a capacity
    factor and a load-balancing auxiliary loss; `expert` names the dense MLP each expert is."""
    n_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25
    aux_loss_coef: float = 0.01
    shared_expert: bool = False
    expert: str = "gelu"

    def check(self, p: str) -> None:
        _require(self.n_experts >= 1, p + ".n_experts", "must be >= 1")
        _require(1 <= self.top_k <= self.n_experts, p + ".top_k", f"must be in [1, n_experts={self.n_experts}]")
        _require(self.capacity_factor > 0, p + ".capacity_factor", "must be > 0")
        _require(self.aux_loss_coef >= 0, p + ".aux_loss_coef", "must be >= 0")
        mlps = [m for m in BUILTIN_COMPONENTS["mlp"] if m != "moe"]
        _require(self.expert in mlps, p + ".expert", f"must be one of {mlps}{suggest(self.expert, mlps)}")


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig(_Frozen):
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: Optional[int] = None      # None: = n_head (MHA); fewer for GQA, 1 for MQA
    n_embd: int = 128
    head_size: Optional[int] = None      # None: n_embd // n_head; set when heads are not n_embd / n_head wide
    block_size: int = 256
    vocab_size: Optional[int] = None     # None: taken from the data's tokenizer at train time
    dropout: float = 0.0
    bias: bool = True                    # biases of every Linear and LayerNorm, unless one of the three below says
    qkv_bias: Optional[bool] = None      # None: = bias; q/k/v projections (Qwen2 has them, its output none)
    attn_proj_bias: Optional[bool] = None  # None: = bias; the attention output projection
    mlp_bias: Optional[bool] = None      # None: = bias; the MLP's Linear layers
    # component choices (names resolved once, when the model is built)
    attention: str = "mha"
    position: str = "learned"
    norm: str = "layernorm"
    norm_placement: str = "pre"
    mlp: str = "gelu"
    mlp_ratio: Optional[float] = None    # None: 4 for plain MLPs, 8/3 for gated ones
    mlp_multiple_of: int = 1             # hidden width rounded up to a multiple of this (Llama: 256)
    mlp_hidden_size: Optional[int] = None  # explicit hidden width; None: from mlp_ratio and mlp_multiple_of
    norm_eps: float = 1e-5
    qk_norm: bool = False                # RMS-normalise q and k per head (Dehghani et al. 2023)
    attn_softcap: float = 0.0            # 0 = off; else logits -> c * tanh(logits / c) (Gemma 2)
    tie_embeddings: bool = True
    init_std: float = 0.02
    # per-variant options
    rope: RopeConfig = field(default_factory=RopeConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    sliding_window: SlidingWindowConfig = field(default_factory=SlidingWindowConfig)
    block_sparse: BlockSparseConfig = field(default_factory=BlockSparseConfig)
    strided: StridedConfig = field(default_factory=StridedConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    extra: dict = field(default_factory=dict)   # free-form options for plugin variants

    @property
    def head_dim(self) -> int:
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    def has_bias(self, part: Literal["qkv", "attn_proj", "mlp"]) -> bool:
        """Whether the Linear layers of `part` carry a bias: its own field when set, else `bias`."""
        own = {"qkv": self.qkv_bias, "attn_proj": self.attn_proj_bias, "mlp": self.mlp_bias}[part]
        return self.bias if own is None else own

    @property
    def kv_heads(self) -> int:
        """n_kv_head, or when unset: n_head, except for attention 'gqa', which then groups Llama-style
        (the largest divisor of n_head that is at most n_head / 2), so `attention=gqa` alone is a mutation."""
        if self.n_kv_head is not None:
            return self.n_kv_head
        if self.attention == "gqa" and self.n_head >= 2:
            return max(d for d in range(1, self.n_head // 2 + 1) if self.n_head % d == 0)
        return self.n_head

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the (dense or per-expert) MLP."""
        if self.mlp_hidden_size is not None:
            return self.mlp_hidden_size
        gated = (self.moe.expert if self.mlp == "moe" else self.mlp) in GATED_MLPS
        ratio = self.mlp_ratio if self.mlp_ratio is not None else (8 / 3 if gated else 4.0)
        hidden = int(ratio * self.n_embd)
        m = self.mlp_multiple_of
        return m * ((hidden + m - 1) // m)

    def check(self, p: str = "model_args") -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", "must be >= 1")
        _require(self.vocab_size is None or self.vocab_size >= 2, p + ".vocab_size", "must be >= 2")
        _require(0.0 <= self.dropout < 1.0, p + ".dropout", "must be in [0, 1)")
        _require(self.head_size is None or self.head_size >= 1, p + ".head_size", "must be >= 1, or null")
        _require(self.head_size is not None or self.n_embd % self.n_head == 0, p + ".n_embd",
                 f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                 f"(head size would be {self.n_embd / self.n_head:g}); change n_embd or n_head, or set head_size")
        _require(self.mlp_hidden_size is None or self.mlp_hidden_size >= 1, p + ".mlp_hidden_size",
                 "must be >= 1, or null")
        if self.attention == "sliding_window" and self.sliding_window.layers:
            _require(len(self.sliding_window.layers) == self.n_layer, p + ".sliding_window.layers",
                     f"needs one entry per layer (n_layer={self.n_layer}), got {len(self.sliding_window.layers)}")
        kv = self.kv_heads
        _require(1 <= kv <= self.n_head and self.n_head % kv == 0, p + ".n_kv_head",
                 f"n_head={self.n_head} must be a multiple of n_kv_head={kv} (each KV head serves a whole "
                 f"group of query heads); valid values: "
                 f"{[d for d in range(1, self.n_head + 1) if self.n_head % d == 0]}")
        _require(self.norm_placement in NORM_PLACEMENTS, p + ".norm_placement",
                 f"must be one of {list(NORM_PLACEMENTS)}{suggest(self.norm_placement, NORM_PLACEMENTS)}")
        _require(self.mlp_ratio is None or self.mlp_ratio > 0, p + ".mlp_ratio", "must be > 0")
        _require(self.mlp_multiple_of >= 1, p + ".mlp_multiple_of", "must be >= 1")
        _require(self.norm_eps > 0, p + ".norm_eps", "must be > 0")
        _require(self.attn_softcap >= 0, p + ".attn_softcap", "must be >= 0 (0 = off)")
        _require(self.init_std > 0, p + ".init_std", "must be > 0")
        for fam in ("attention", "position", "norm", "mlp"):
            check_component(fam, getattr(self, fam), f"{p}.{fam}")
        for sub in ("rope", "sliding_window", "block_sparse", "strided", "mla", "moe"):
            getattr(self, sub).check(f"{p}.{sub}")
        # attention x position combinations that cannot work, refused with the reason
        rotary = self.position in ("rope", "hybrid")
        if rotary and self.attention != "mla":
            rot = int(self.head_dim * self.rope.fraction)
            _require(rot >= 2 and rot % 2 == 0, p + ".n_embd",
                     f"RoPE rotates pairs of channels, so the rotated part of each head must be even: head size "
                     f"{self.head_dim} x rope.fraction {self.rope.fraction} = {self.head_dim * self.rope.fraction:g}; "
                     f"change n_embd/n_head or rope.fraction")
        if self.attention == "mla":
            _require(self.n_kv_head is None or self.n_kv_head == self.n_head, p + ".n_kv_head",
                     f"attention 'mla' shares K/V through its latent (mla.kv_rank), not through KV heads; "
                     f"leave n_kv_head unset (got {self.n_kv_head} of {self.n_head} heads)")
            _require(self.n_head % self.mla.rope_heads == 0, p + ".mla.rope_heads",
                     f"each RoPE key serves a whole group of query heads: n_head={self.n_head} must be a multiple "
                     f"of mla.rope_heads={self.mla.rope_heads}")
            if rotary:
                # DeepSeek-V2: RoPE cannot act on keys expanded from the latent, so it rotates a separate
                # key of mla.rope_head_dim channels; rope.fraction has no meaning there
                dr = self.mla.rope_dim(self.head_dim)
                _require(2 <= dr and (dr < self.head_dim or self.mla.rope_select), p + ".mla.rope_head_dim",
                         f"attention 'mla' with position {self.position!r} rotates a decoupled key of "
                         f"mla.rope_head_dim channels, which must be in [2, head size {self.head_dim}) "
                         f"(got {dr}); or use position 'nope', 'alibi' or 'learned'")
                if self.mla.rope_select is None:
                    _require(self.rope.fraction == 1.0, p + ".rope.fraction",
                             f"attention 'mla' rotates only its decoupled key (mla.rope_head_dim), so rope.fraction "
                             f"does not apply; leave it at 1 (got {self.rope.fraction})")
                else:  # the keys pick their frequencies from the rotation of head_dim x rope.fraction channels
                    rot = int(self.head_dim * self.rope.fraction) // 2 * 2
                    _require(dr <= rot, p + ".mla.rope_head_dim",
                             f"mla.rope_select={self.mla.rope_select!r} picks rope_head_dim/2 of the "
                             f"{rot // 2} frequencies of head size {self.head_dim} x rope.fraction "
                             f"{self.rope.fraction}; rope_head_dim must be <= {rot} (got {dr})")


# --------------------------------------------------------------------------------------------------
# Training, data, eval
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation (Rafailov et al. 2023) against a frozen reference. loss_type: `sigmoid`
    (DPO), `ipo` (Azar et al. 2023), `hinge` (SLiC, Zhao et al. 2023), `robust` (Chowdhury et al. 2024, with
    `label_smoothing` the assumed rate of flipped labels). `rpo_alpha` > 0 adds that weight times the chosen
    answer's per-token negative log-likelihood to every pair's loss (RPO, Pang et al. 2024, eq. 1; TRL 0.x's
    `rpo_alpha`, TRL 1.x's loss_type [sigmoid, sft]): it keeps DPO from lowering log p(chosen) along with log p(rejected). reference: `adapters_off`
    (the same network with its LoRA adapters disabled: no second copy), `copy` (a frozen copy of the starting
    weights), `auto` (the first under LoRA, else the second)."""
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    reference: Literal["auto", "adapters_off", "copy"] = "auto"

    def check(self, p: str) -> None:
        _require(self.beta > 0, p + ".beta", "must be > 0")
        _require(0 <= self.label_smoothing < 0.5, p + ".label_smoothing", "must be in [0, 0.5)")
        _require(self.rpo_alpha >= 0, p + ".rpo_alpha", "must be >= 0 (0 is the plain preference loss)")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015) for training.objective `distill`: the loss is
    (1 - alpha) x cross-entropy + alpha x temperature^2 x KL(teacher || student) of the next-token
    distributions at `temperature`. `teacher`: a foundry run directory or a zoo name / Hugging Face directory
    with the student's vocabulary (foundry.surgery heals a mutated model against its parent this way)."""
    teacher: Optional[str] = None
    alpha: float = 0.5
    temperature: float = 1.0

    def check(self, p: str) -> None:
        _require(0 <= self.alpha <= 1, p + ".alpha", "must be in [0, 1] (the weight of the KL term)")
        _require(self.temperature > 0, p + ".temperature", "must be > 0")


@dataclass(frozen=True)
class TrainingConfig:
    max_iters: int = 2000
    learning_rate: float = 1e-3
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0               # 0 = off
    warmup_iters: int = 100
    lr_decay_iters: Optional[int] = None  # None: = max_iters
    min_lr: float = 1e-4
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_frac: float = 0.2              # wsd: fraction of the run spent decaying at the end
    eval_interval: int = 250
    eval_iters: int = 20                 # validation = eval_iters x batch_size windows, fixed and contiguous
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"                 # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    num_threads: int = 0                 # CPU intra-op threads; 0 = torch's default
    cpu_malloc_tuning: bool = True       # CPU runs on glibc: keep freed memory for reuse (see train.tune_cpu_malloc)
    distributed: Literal["auto", "ddp", "fsdp", "none"] = "auto"
    fsdp_min_params: int = 1_000_000_000
    loss: str = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    z_loss: float = 0.0                  # PaLM's z-loss coefficient on log(Z)^2; 0 = off
    sample_tokens: int = 200             # length of the generated sample at the end (0 = none)
    sample_prompt: str = "\n"
    objective: Literal["lm", "sft", "dpo", "distill"] = "lm"   # what a batch is and its loss (trainer/objectives.py)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def check(self, p: str = "training") -> None:
        for name in ("max_iters", "batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters",
                     "log_interval"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", "must be >= 1")
        _require(self.learning_rate > 0, p + ".learning_rate", "must be > 0")
        _require(0 <= self.min_lr <= self.learning_rate, p + ".min_lr",
                 f"must be in [0, learning_rate={self.learning_rate}]")
        _require(self.weight_decay >= 0, p + ".weight_decay", "must be >= 0")
        _require(0 <= self.beta1 < 1, p + ".beta1", "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, p + ".beta2", "must be in [0, 1)")
        _require(self.grad_clip >= 0, p + ".grad_clip", "must be >= 0 (0 = off)")
        _require(self.warmup_iters >= 0, p + ".warmup_iters", "must be >= 0")
        _require(self.lr_decay_iters is None or self.lr_decay_iters >= 1, p + ".lr_decay_iters", "must be >= 1")
        # The warmup must end before the schedule does. A run may stop before its schedule's end (halving's
        # early rungs train to max_iters along a schedule of lr_decay_iters), so with lr_decay_iters set the
        # bound is lr_decay_iters; without it the schedule ends at max_iters.
        if self.warmup_iters:
            end, name = ((self.lr_decay_iters, "lr_decay_iters") if self.lr_decay_iters is not None
                         else (self.max_iters, "max_iters"))
            _require(self.warmup_iters < end, p + ".warmup_iters",
                     f"warmup_iters={self.warmup_iters} >= {name}={end}: the learning rate would never leave "
                     f"its warmup (the peak {self.learning_rate:g} is reached at warmup_iters); make warmup_iters "
                     f"smaller than {name}" + (f", e.g. {end // 10}," if end >= 10 else "") + " or 0")
        _require(0 < self.decay_frac <= 1, p + ".decay_frac", "must be in (0, 1]")
        _require(self.num_threads >= 0, p + ".num_threads", "must be >= 0")
        _require(self.fsdp_min_params >= 0, p + ".fsdp_min_params", "must be >= 0")
        _require(self.focal_gamma >= 0, p + ".focal_gamma", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, p + ".label_smoothing", "must be in [0, 1)")
        _require(self.z_loss >= 0, p + ".z_loss", "must be >= 0")
        _require(self.sample_tokens >= 0, p + ".sample_tokens", "must be >= 0")
        dev = self.device
        _require(dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit()),
                 p + ".device", f"must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
        check_component("loss", self.loss, p + ".loss")
        self.dpo.check(p + ".dpo")
        self.distill.check(p + ".distill")
        _require(self.objective != "distill" or bool(self.distill.teacher), p + ".distill.teacher",
                 "objective 'distill' needs a teacher: a run directory or zoo name (training.distill.teacher)")


@dataclass(frozen=True)
class DataConfig:
    path: Optional[str] = None           # a prepared data set directory (python -m foundry.data prepare); None = embedded
    order: Literal["random", "sequential"] = "random"
    curriculum: Literal["none", "length", "loss"] = "none"
    curriculum_model: Optional[str] = None  # run directory of the reference model for curriculum 'loss'
    # finetuning (training.objective sft | dpo): data.path is a JSONL file (or HH-RLHF's .jsonl.gz)
    chat_format: Optional[str] = None    # chatml | llama3 | alpaca | template (the checkpoint's own); None = template if any, else chatml
    val_examples: int = 64               # examples (sft) or pairs (dpo) held out for validation, the file's last ones
    reserved: int = 0                    # the file's first N records are left to evaluation (hh_rlhf scores the first --limit)

    def check(self, p: str = "data") -> None:
        _require(self.curriculum != "loss" or bool(self.curriculum_model), p + ".curriculum_model",
                 "curriculum 'loss' orders the data by a reference model's loss: set data.curriculum_model to "
                 "that model's run directory, or use curriculum 'length' or 'none'")
        _require(self.curriculum_model is None or self.curriculum == "loss", p + ".curriculum_model",
                 f"is read only by curriculum 'loss' (curriculum is {self.curriculum!r}); remove it or set "
                 f"data.curriculum: loss")
        _require(self.val_examples >= 1, p + ".val_examples", "must be >= 1")
        _require(self.reserved >= 0, p + ".reserved", "must be >= 0")


@dataclass(frozen=True)
class EvalConfig(_Frozen):
    tasks: list = field(default_factory=list)
    limit: Optional[int] = None
    num_fewshot: Optional[int] = None

    def check(self, p: str = "eval") -> None:
        _require(all(isinstance(t, str) for t in self.tasks), p + ".tasks", "must be a list of task names")
        known = eval_task_names()
        for t in self.tasks:
            _require(t in known, p + ".tasks", f"unknown task {t!r}{suggest(t, known)} (known: {', '.join(known)}; "
                                                f"`python -m foundry.eval --list` describes them)")
        _require(self.limit is None or self.limit >= 1, p + ".limit", "must be >= 1")
        _require(self.num_fewshot is None or self.num_fewshot >= 0, p + ".num_fewshot", "must be >= 0")


@dataclass(frozen=True)
class LoRAConfig(_Frozen):
    """Low-rank adapters (Hu et al. 2021) on the nn.Linear layers whose names match `targets` (module paths
    such as `attn.qkv`, `mlp.fc`, or fnmatch globs like `blocks.0.*`); the base weights are frozen. rank 0 =
    no LoRA. The update is (alpha / rank) * B A, B starting at zero (foundry/lora.py)."""
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: ["attn.qkv", "attn.proj"])

    def check(self, p: str = "lora") -> None:
        _require(self.rank >= 0, p + ".rank", "must be >= 0 (0 = off)")
        _require(self.alpha > 0, p + ".alpha", "must be > 0")
        _require(0 <= self.dropout < 1, p + ".dropout", "must be in [0, 1)")
        _require(bool(self.targets) and all(isinstance(t, str) and t for t in self.targets), p + ".targets",
                 "must be a non-empty list of module name patterns, e.g. [attn.qkv, attn.proj]")


@dataclass(frozen=True)
class ExperimentConfig(_Frozen):
    base_model: Literal["v1", "v2"] = "v1"
    model_args: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs/baseline"
    plugins: list = field(default_factory=list)   # modules or .py files that register extra variants
    # starting weights: a foundry run directory (its trained checkpoint), or a zoo model name / Hugging Face
    # checkpoint directory (foundry.zoo); None = a fresh random model. Finetuning (lora, sft, dpo) needs one.
    init_from: Optional[str] = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lineage: dict = field(default_factory=dict)   # parent, mutation, config hash (written by foundry.mutate)

    def check(self) -> None:
        _require(all(isinstance(x, str) for x in self.plugins), "plugins", "must be a list of strings")
        self.model_args.check("model_args")
        self.training.check("training")
        self.eval.check("eval")
        self.data.check("data")
        self.lora.check("lora")
        _require(bool(self.out_dir), "out_dir", "must not be empty")

    def to_dict(self) -> dict:
        return _thaw(self)

    def to_yaml(self, used_only: bool = False) -> str:
        """The config as YAML; `used_only`: only what the chosen variants and run settings read (as the hash
        sees it, but spelt as given), which loads back to the same hash."""
        if used_only:
            d = catalog.used(self.to_dict(), canonical=False)
            return yaml.safe_dump({k: d[k] for k in self.to_dict() if k in d}, sort_keys=False)
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: list[str] | dict) -> "ExperimentConfig":
        """A new, validated config with `key.path=value` overrides applied."""
        raw = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
        for key, value in items:
            _set_path(raw, key, value)
        return from_dict(raw)

    def used_dict(self) -> dict:
        """What the model and run actually read (foundry.catalog.used): the option blocks of the chosen
        variants only, switched settings only when on, in canonical form; without out_dir and lineage."""
        d = catalog.used(self.to_dict())
        d.pop("out_dir"), d.pop("lineage")
        return d

    def hash(self) -> str:
        """Identity of what is trained: `used_dict()`, so a change that nothing reads (sliding_window.window
        on an MHA model, rope.theta under learned positions) keeps the hash, and is a no-op mutation."""
        return hashlib.sha256(json.dumps(self.used_dict(), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Presets: v1 = GPT-2, v2 = Llama-style. They fill model_args keys the experiment leaves out.
# --------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    "v1": dict(attention="mha", position="learned", norm="layernorm", mlp="gelu",
               mlp_multiple_of=1, tie_embeddings=True, bias=True, norm_eps=1e-5),
    "v2": dict(attention="gqa", position="rope", norm="rmsnorm", mlp="swiglu",
               mlp_multiple_of=32, tie_embeddings=False, bias=False, norm_eps=1e-5),
}


def _apply_preset(raw: dict) -> dict:
    base = raw.get("base_model", "v1")
    if base not in PRESETS:
        raise ConfigError(f"base_model: unknown preset {base!r}{suggest(str(base), PRESETS)} "
                          f"(known: {', '.join(PRESETS)})")
    margs = raw.get("model_args") or {}
    if not isinstance(margs, dict):
        raise ConfigError(f"model_args: expected a mapping, got {type(margs).__name__}")
    merged = {**PRESETS[base], **margs}
    if base == "v2" and "n_kv_head" not in margs and merged.get("attention") == "gqa":
        n_head = merged.get("n_head", ModelConfig.n_head)
        if isinstance(n_head, int) and n_head >= 2:
            # Llama-style grouping: the largest divisor of n_head that is at most n_head / 2
            merged["n_kv_head"] = max(d for d in range(1, n_head // 2 + 1) if n_head % d == 0)
        else:
            merged["attention"] = "mha"
    return {**raw, "model_args": merged}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key repeated in one mapping is an error (YAML 1.2 forbids it; PyYAML keeps
    the last silently, so a second `learning_rate:` lower down would win unseen)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line)
            except TypeError:                                   # an unhashable key: PyYAML's own error follows
                continue
            if first is not None:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} repeats the one on line "
                                  f"{first + 1} of the same mapping; YAML would keep the second silently: "
                                  f"keep one of them")
        return super().construct_mapping(node, deep)


def read_yaml_strict(path: Path) -> Any:
    """A YAML file's content, refusing repeated keys (ConfigError naming the file and both lines)."""
    try:
        return yaml.load(path.read_text(), Loader=StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_experiment(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML, apply `key.path=value` overrides, fill the preset, validate strictly."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    raw = read_yaml_strict(path)
    if raw is None:
        raise ConfigError(f"{path}: the experiment file is empty; an experiment names at least its model or its "
                          f"training (copy experiments/baseline.yaml to start from the defaults)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        for o in overrides or []:
            key, value = _split_override(o)
            _set_path(raw, key, value)
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def from_dict(raw: dict) -> ExperimentConfig:
    if raw.get("init_from"):
        raw = _checkpoint_architecture(dict(raw))
    raw = _apply_preset(dict(raw))
    plugins = raw.get("plugins") or []
    if plugins:
        load_plugins(plugins)
    cfg = _build(ExperimentConfig, raw, "")
    cfg.check()
    return cfg


# model_args an experiment may set on top of init_from's checkpoint: how it trains, not what the weights compute
# (block_size: the training context, at most the checkpoint's; a learned position table keeps its first rows)
CHECKPOINT_FREE_KEYS = ("dropout", "init_std", "block_size", "extra")


def _checkpoint_architecture(raw: dict) -> dict:
    """init_from set: model_args become the checkpoint's architecture (a foundry run's config.yaml, or a zoo
    checkpoint's config.json through foundry.zoo's torch-free catalog). A model_args key the experiment sets
    that contradicts the checkpoint fails naming both values. A checkpoint not found here is left to the
    trainer, which names what is missing (a base may be trained after its finetune is written)."""
    from foundry.zoo.catalog import ZooError, checkpoint_model_args

    src = raw["init_from"]
    if not isinstance(src, str):
        raise ConfigError(f"init_from: expected a zoo name or a checkpoint / run directory, got {src!r}")
    given = raw.get("model_args") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"model_args: expected a mapping, got {type(given).__name__}")
    run_config = Path(src).expanduser() / "config.yaml"
    try:
        if run_config.is_file():  # a foundry run directory
            theirs = (yaml.safe_load(run_config.read_text()) or {}).get("model_args") or {}
        else:
            theirs, _ = checkpoint_model_args(src)
    except (ZooError, OSError, yaml.YAMLError):
        return raw
    ckpt = dataclasses.asdict(_build(ModelConfig, theirs, "model_args"))
    mine = dataclasses.asdict(_build(ModelConfig, given, "model_args"))  # typed, so 1e-5 and "1e-5" compare equal

    def paths(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "extra":
                yield from paths(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    def at(d: dict, path: str):
        for part in path.split("."):
            d = d[part]
        return d

    for key in paths(given):
        if key.split(".")[0] in CHECKPOINT_FREE_KEYS:
            continue
        if at(given, key) is None:  # unset (e.g. vocab_size: null in a written experiment): the checkpoint's
            continue
        if at(mine, key) != at(ckpt, key):
            raise ConfigError(f"model_args.{key}: {at(mine, key)!r} contradicts init_from {src!r}, whose "
                              f"{key} is {at(ckpt, key)!r}; remove the key (the checkpoint sets the architecture)")
    if mine["block_size"] > ckpt["block_size"] and "block_size" in given:
        raise ConfigError(f"model_args.block_size: {mine['block_size']} exceeds init_from {src!r}'s "
                          f"{ckpt['block_size']} positions; use at most that")
    free = {k: given[k] for k in CHECKPOINT_FREE_KEYS if k in given}
    return {**raw, "model_args": {**theirs, **free}}


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    return [_split_override(o) for o in items]


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set training.max_iters=100")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_path(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _require(ok: bool, keypath: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{keypath}: {msg}")


def _build(cls, data: Any, path: str):
    """Construct dataclass `cls` from a mapping, strictly: unknown keys and wrong types fail with the key path."""
    where = path or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        near = closest(str(k), fields)
        hint = f"; did you mean '{_join(path, near[0])}'?" if near else ""
        raise ConfigError(f"unknown key '{_join(path, k)}'{hint} (valid keys here: {', '.join(fields)})")
    kwargs = {k: _coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(tp, value: Any, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}{suggest(str(value), allowed)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 6e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if tp is list or origin is list:
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return list(value)
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"config field {path} has unsupported type {tp}")


# --------------------------------------------------------------------------------------------------
# Component names and plugins
# --------------------------------------------------------------------------------------------------
def check_component(family: str, name: str, keypath: str) -> None:
    """A component name is valid if built in, scaffolded under foundry/modules/variants/, or registered by a
    loaded plugin. Checked without importing torch unless plugins are loaded (they import it themselves)."""
    known = catalog.names(family)
    if name in known:
        return
    raise ConfigError(f"{keypath}: unknown {family} {name!r}{suggest(name, sorted(known))} "
                      f"(known: {', '.join(sorted(known))})")


_EVAL_TASKS: list[str] | None = None


def eval_task_names() -> list[str]:
    """The evaluation task names (`name:` of foundry/eval/tasks/*.yaml), read as YAML without importing the
    evaluation package (and torch): the config checks eval.tasks at load like any other key."""
    global _EVAL_TASKS
    if _EVAL_TASKS is None:
        names = []
        for f in sorted((Path(__file__).parent / "eval" / "tasks").glob("*.yaml")):
            spec = yaml.safe_load(f.read_text())
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                names.append(spec["name"])
        _EVAL_TASKS = sorted(names)
    return _EVAL_TASKS


def scaffolded_names(family: str) -> list[str]:
    """Names registered by files in foundry/modules/variants/, read from their source (no import, no torch)."""
    return list(catalog.scaffolded(family))


_LOADED_PLUGINS: set[str] = set()


def load_plugins(plugins: list[str]) -> None:
    """Import user plugin modules (a dotted module name or a .py file, relative to the working directory) that
    register their own variants. Each is imported once per process (a file however it is spelt); a plugin that
    fails to import raises ConfigError naming the plugin, the error and the plugin's line where it happened."""
    import importlib
    import importlib.util
    import sys
    import traceback

    for spec in plugins:
        if spec in _LOADED_PLUGINS:
            continue
        module_name = None
        try:
            if spec.endswith(".py") or os.sep in spec or "/" in spec:
                p = Path(spec)
                if not p.is_file():
                    raise FileNotFoundError(f"no such file {p} (relative to the working directory {Path.cwd()})")
                module_name = "foundry_plugin_" + hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
                if module_name not in sys.modules:  # the same file under another spelling: already imported
                    mod_spec = importlib.util.spec_from_file_location(module_name, p)
                    module = importlib.util.module_from_spec(mod_spec)
                    sys.modules[module_name] = module
                    mod_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except Exception as e:  # noqa: BLE001 - any failure in user code is reported with its name
            if module_name is not None:
                sys.modules.pop(module_name, None)
            where = ""
            frames = [f for f in traceback.extract_tb(e.__traceback__)
                      if "importlib" not in f.filename and f.filename != __file__]
            if frames and not isinstance(e, SyntaxError):
                where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
            raise ConfigError(f"plugins: plugin {spec!r} failed to load: {type(e).__name__}: {e}{where}") from e
        _LOADED_PLUGINS.add(spec)


def save_yaml_atomic(cfg: ExperimentConfig, path: str | os.PathLike, header: str = "") -> None:
    write_text_atomic(path, header + cfg.to_yaml())
