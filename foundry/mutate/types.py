"""Every built-in mutation type: one small function each, mapping (config, variant string) -> overrides.

A function returns `{"key.path": value}` overrides; foundry.mutate applies them with ExperimentConfig.replace,
so every result is validated exactly like a hand-written experiment (an invalid one is refused with the
config's own reason). A function raises BadVariant for a variant it cannot parse. Numeric variants accept a
plain number or, where listed, `x<f>` to scale the current value (`lr x0.5`, `width x2`).
"""
from __future__ import annotations

from foundry import catalog
from foundry.config import BUILTIN_COMPONENTS, GATED_MLPS, NORM_PLACEMENTS, ConfigError, ExperimentConfig
from foundry.mutate import BadVariant, mutation, safe_fragment


# --------------------------------------------------------------------------------------------------
# Variant parsing
# --------------------------------------------------------------------------------------------------
def choice(v: str, options) -> str:
    if v not in options:
        raise BadVariant(f"unknown variant {v!r}")
    return v


def number(v: str, current: float | None = None) -> float:
    """A float, or x<f> times `current`."""
    try:
        if v.startswith("x") and current is not None:
            return float(v[1:]) * current
        return float(v)
    except ValueError:
        raise BadVariant(f"{v!r} is not a number" + (" or x<factor>" if current is not None else "")) from None


def integer(v: str, current: int | None = None) -> int:
    """An integer: plain, +k / -k relative to `current`, or x<f> (rounded)."""
    try:
        if current is not None and v[:1] in "+-" and len(v) > 1:
            return current + int(v)
        if current is not None and v.startswith("x"):
            return int(round(float(v[1:]) * current))
        f = float(v)
    except ValueError:
        raise BadVariant(f"{v!r} is not an integer") from None
    if not f.is_integer():
        raise BadVariant(f"{v!r} is not an integer")
    return int(f)


def on_off(v: str) -> bool:
    flags = {"on": True, "off": False, "true": True, "false": False}
    if v.lower() not in flags:
        raise BadVariant(f"unknown variant {v!r}")
    return flags[v.lower()]


def _scales(current, factors=(0.5, 2)) -> list[str]:
    return [f"{current * f:g}" for f in factors]


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------
def _attention_examples(cfg: ExperimentConfig) -> list[str]:
    m = cfg.model_args
    gqa = [f"gqa_{d}kv" for d in range(2, m.n_head) if m.n_head % d == 0]
    return gqa + [f"sliding_{w}" for w in (m.block_size // 4, m.block_size // 2) if w >= 1]


@mutation("attention", group="architecture", examples=_attention_examples,
          variants=("mha", "gqa_<n>kv", "mqa", "mla", "mla_<r>", "sliding_<w>", "block_sparse", "strided"))
def attention(cfg, v):
    """Attention variant: grouped-query with n KV heads, multi-query, latent (MLA, mla_<r>: latent rank r),
    sliding window of w, sparse."""
    m = cfg.model_args
    if v == "mha":
        return {"model_args.attention": "mha", "model_args.n_kv_head": None}
    if v == "mqa":
        return {"model_args.attention": "gqa", "model_args.n_kv_head": 1}
    if v.startswith("gqa_") and v.endswith("kv"):
        n = integer(v[4:-2])          # n == n_head is MHA: the config hash says no-op
        return {"model_args.attention": "gqa", "model_args.n_kv_head": n}
    if v == "mla" or v.startswith("mla_"):  # MLA shares K/V through its latent, not through KV heads
        over = {"model_args.attention": "mla", "model_args.n_kv_head": None}
        if v != "mla":
            over["model_args.mla.kv_rank"] = integer(v[len("mla_"):])
        if m.position in ("rope", "hybrid") and m.rope.fraction < 1 and m.mla.rope_select is None:
            # a partial-rotary parent: DeepSeek-V2's key frequencies theta^(-2i/rope_head_dim) would drop its
            # rope.fraction; the RoPE keys turn at the highest of the parent's own rotated frequencies instead
            over["model_args.mla.rope_select"] = "high"
        return over
    if v.startswith("sliding_"):
        w = integer(v[len("sliding_"):])  # w >= block_size is global attention: a no-op by the hash
        return {"model_args.attention": "sliding_window", "model_args.sliding_window.window": w}
    if v in catalog.names("attention"):   # block_sparse, strided, scaffolded and plugin attentions
        return {"model_args.attention": v}
    raise BadVariant(f"unknown variant {v!r}")


@mutation("position", group="architecture", variants=BUILTIN_COMPONENTS["position"])
def position(cfg, v):
    """Position encoding: learned absolute, RoPE, ALiBi, none, or RoPE plus a bias (hybrid)."""
    return {"model_args.position": choice(v, catalog.names("position"))}


@mutation("norm", group="architecture", variants=BUILTIN_COMPONENTS["norm"])
def norm(cfg, v):
    """Normalisation layer: LayerNorm or RMSNorm."""
    return {"model_args.norm": choice(v, catalog.names("norm"))}


@mutation("norm_placement", group="architecture", variants=NORM_PLACEMENTS)
def norm_placement(cfg, v):
    """Where the norms sit: pre-norm, post-norm (original Transformer) or sandwich (both)."""
    return {"model_args.norm_placement": choice(v, NORM_PLACEMENTS)}


_DENSE_MLPS = tuple(m for m in BUILTIN_COMPONENTS["mlp"] if m != "moe")


@mutation("activation", group="architecture", variants=_DENSE_MLPS)
def activation(cfg, v):
    """MLP activation; switching between plain (4x) and gated (8/3x) MLPs keeps the parameter count."""
    m = cfg.model_args
    v = choice(v, [n for n in catalog.names("mlp") if n != "moe"])
    if m.mlp == "moe":  # the experts change, the routing stays
        return {"model_args.moe.expert": v}
    out = {"model_args.mlp": v}
    was_gated, gated = m.mlp in GATED_MLPS, v in GATED_MLPS
    if m.mlp_ratio is not None and was_gated != gated:
        # a gated MLP has 3 matrices instead of 2: 8/3 hidden matches the parameters of 4x (Shazeer 2020)
        out["model_args.mlp_ratio"] = m.mlp_ratio * (2 / 3 if gated else 3 / 2)
    return out


@mutation("mlp_ratio", group="architecture", variants=("<f>", "x<f>"),
          examples=lambda c: _scales(c.model_args.mlp_ratio or 4.0))
def mlp_ratio(cfg, v):
    """MLP hidden width as a multiple of n_embd."""
    m = cfg.model_args
    current = m.mlp_hidden / m.n_embd if m.mlp_hidden_size is not None else m.mlp_ratio
    # an explicit width (a pretrained checkpoint's mlp_hidden_size) gives way to the ratio
    return {"model_args.mlp_ratio": number(v, current or (8 / 3 if m.mlp in GATED_MLPS else 4.0)),
            "model_args.mlp_hidden_size": None}


@mutation("moe", group="architecture", variants=("<n>", "<n>top<k>", "off"), examples=lambda c: ["4", "8top1", "off"])
def moe(cfg, v):
    """Mixture of experts: n experts with top-k routing (default top-2); `off` returns to the dense MLP."""
    m = cfg.model_args
    if v == "off":
        if m.mlp != "moe":
            return {}
        return {"model_args.mlp": m.moe.expert}
    n, _, k = v.partition("top")
    n_experts = integer(n)
    top_k = integer(k) if k else min(2, n_experts)
    out = {"model_args.mlp": "moe", "model_args.moe.n_experts": n_experts, "model_args.moe.top_k": top_k}
    if m.mlp != "moe":
        out["model_args.moe.expert"] = m.mlp
    return out


@mutation("depth", group="architecture", variants=("<n>", "+<k>", "-<k>"),
          examples=lambda c: [str(c.model_args.n_layer + d) for d in (-1, 1) if c.model_args.n_layer + d >= 1])
def depth(cfg, v):
    """Number of transformer blocks (n_layer)."""
    return {"model_args.n_layer": integer(v, cfg.model_args.n_layer)}


@mutation("width", group="architecture", variants=("<n>", "x<f>"),
          examples=lambda c: [str(int(c.model_args.n_embd * f)) for f in (0.5, 2)])
def width(cfg, v):
    """Model width (n_embd); must stay divisible by n_head."""
    return {"model_args.n_embd": integer(v, cfg.model_args.n_embd)}


@mutation("heads", group="architecture", variants=("<n>",),
          examples=lambda c: [str(d) for d in range(1, c.model_args.n_embd + 1)
                              if c.model_args.n_embd % d == 0 and d <= 32])
def heads(cfg, v):
    """Number of attention heads (n_head); n_embd must divide evenly."""
    m = cfg.model_args
    n = integer(v, m.n_head)
    out = {"model_args.n_head": n}
    if m.attention != "gqa":
        out["model_args.n_kv_head"] = None  # MHA follows the head count
    return out


@mutation("context", group="architecture", variants=("<n>", "x<f>"),
          examples=lambda c: [str(int(c.model_args.block_size * f)) for f in (0.5, 2)])
def context(cfg, v):
    """Context length (block_size)."""
    return {"model_args.block_size": integer(v, cfg.model_args.block_size)}


@mutation("qk_norm", group="architecture", variants=("on", "off"))
def qk_norm(cfg, v):
    """RMS-normalise queries and keys per head (Dehghani et al. 2023)."""
    return {"model_args.qk_norm": on_off(v)}


@mutation("softcap", group="architecture", variants=("<c>", "off"), examples=lambda c: ["30", "50", "off"])
def softcap(cfg, v):
    """Attention logit soft-capping c * tanh(logits / c) (Gemma 2); off = 0."""
    return {"model_args.attn_softcap": 0.0 if v == "off" else number(v)}


@mutation("tie_embeddings", group="architecture", variants=("on", "off"))
def tie_embeddings(cfg, v):
    """Share the token embedding with the output head."""
    return {"model_args.tie_embeddings": on_off(v)}


@mutation("rope_theta", group="architecture", variants=("<theta>", "x<f>"),
          examples=lambda c: ["500000", "1000"])
def rope_theta(cfg, v):
    """RoPE base frequency (read by rope, hybrid and mla; elsewhere the config hash calls it a no-op)."""
    return {"model_args.rope.theta": number(v, cfg.model_args.rope.theta)}


@mutation("dropout", group="architecture", variants=("<p>",), examples=lambda c: ["0.0", "0.1", "0.2"])
def dropout(cfg, v):
    """Dropout probability on attention, residual and MLP outputs."""
    return {"model_args.dropout": number(v)}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@mutation("loss", group="training", variants=(*BUILTIN_COMPONENTS["loss"], "dpo"))
def loss(cfg, v):
    """Training loss: cross-entropy, focal, label-smoothed cross-entropy (validation is always plain CE), or
    dpo (preference pairs in data.path against the parent's trained weights)."""
    if v == "dpo":
        return {"training.objective": "dpo", **_trained_base(cfg)}
    return {"training.loss": choice(v, catalog.names("loss"))}


@mutation("z_loss", group="training", variants=("<c>", "off"), examples=lambda c: ["1e-4", "off"])
def z_loss(cfg, v):
    """PaLM's z-loss coefficient on log(Z)^2 (keeps logits from drifting); off = 0."""
    return {"training.z_loss": 0.0 if v == "off" else number(v)}


@mutation("lr", group="training", variants=("<lr>", "x<f>"), stem=lambda v: f"lr_{v}",
          examples=lambda c: _scales(c.training.learning_rate, (0.1, 0.5, 2, 10)) + ["x0.5", "x2"])
def lr(cfg, v):
    """Peak learning rate; min_lr keeps its ratio to it."""
    t = cfg.training
    new = number(v, t.learning_rate)
    if new <= 0:
        raise BadVariant(f"a learning rate must be > 0, got {new:g}")
    return {"training.learning_rate": new, "training.min_lr": t.min_lr * new / t.learning_rate}


_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "wsd",
              "warmup-stable-decay": "wsd", "warmup_stable_decay": "wsd"}


@mutation("lr_schedule", group="training", variants=("cosine", "linear", "constant", "wsd"),
          stem=lambda v: f"lr_schedule_{_SCHEDULES.get(v, v)}")
def lr_schedule(cfg, v):
    """Learning-rate decay after warmup: cosine, linear, constant, or warmup-stable-decay (wsd)."""
    return {"training.lr_schedule": _SCHEDULES[choice(v, _SCHEDULES)]}


@mutation("batch_size", group="training", variants=("<n>", "x<f>"),
          examples=lambda c: [str(int(c.training.batch_size * f)) for f in (0.5, 2) if c.training.batch_size * f >= 1])
def batch_size(cfg, v):
    """Sequences per step (training.batch_size); with a token budget, the sweep adjusts the iterations."""
    return {"training.batch_size": integer(v, cfg.training.batch_size)}


@mutation("warmup", group="training", variants=("<iters>",),
          examples=lambda c: [str(c.training.warmup_iters // 2), str(c.training.warmup_iters * 2)])
def warmup(cfg, v):
    """Linear warmup length in iterations."""
    return {"training.warmup_iters": integer(v, cfg.training.warmup_iters)}


@mutation("grad_clip", group="training", variants=("<norm>", "off"), examples=lambda c: ["0.5", "1.0", "off"])
def grad_clip(cfg, v):
    """Gradient-norm clipping threshold; off = 0."""
    return {"training.grad_clip": 0.0 if v == "off" else number(v)}


@mutation("weight_decay", group="training", variants=("<wd>",), examples=lambda c: ["0.0", "0.01", "0.1"])
def weight_decay(cfg, v):
    """AdamW decoupled weight decay on matrices."""
    return {"training.weight_decay": number(v, cfg.training.weight_decay)}


@mutation("adam_betas", group="training", variants=("<b1>,<b2>",), examples=lambda c: ["0.9,0.95", "0.9,0.999"])
def adam_betas(cfg, v):
    """AdamW (beta1, beta2), written b1,b2 (or b1_b2)."""
    parts = v.replace("_", ",").split(",")
    if len(parts) != 2:
        raise BadVariant(f"expected two numbers b1,b2, got {v!r}")
    return {"training.beta1": number(parts[0]), "training.beta2": number(parts[1])}


# --------------------------------------------------------------------------------------------------
# Finetuning: LoRA (foundry/lora.py) on the parent's trained weights
# --------------------------------------------------------------------------------------------------
def _trained_base(cfg) -> dict:
    """A finetune starts from trained weights: the parent's own starting point when it has one (a zoo model, or
    the run a LoRA parent finetunes), else the parent's trained run (its out_dir; training refuses, naming the
    command, while that run does not exist yet)."""
    return {"init_from": cfg.init_from or cfg.out_dir}


def _needs_lora(cfg, what: str) -> None:
    if cfg.lora.rank == 0:
        raise ConfigError(f"{what} changes LoRA adapters, and this experiment has none (lora.rank 0); "
                          f"mutate lora_rank first (e.g. python -m foundry.mutate lora_rank 16)")


LORA_TARGETS = {"attn": ["attn.qkv", "attn.proj"], "mlp": ["mlp.fc", "mlp.proj"],
                "all": ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"], "qkv": ["attn.qkv"]}


@mutation("lora_rank", group="finetune", variants=("<r>",), stem=lambda v: f"lora_r{safe_fragment(v)}",
          examples=lambda c: ["8", "16", "32"])
def lora_rank(cfg, v):
    """LoRA adapters of rank r on the parent's trained weights (base frozen; default targets attn.qkv, attn.proj)."""
    r = integer(v)
    if r < 1:
        raise BadVariant(f"rank {v!r} must be >= 1")
    return {"lora.rank": r, **({} if cfg.lora.rank else _trained_base(cfg))}


@mutation("lora_alpha", group="finetune", variants=("<alpha>", "x<f>"), examples=lambda c: _scales(c.lora.alpha))
def lora_alpha(cfg, v):
    """LoRA scale numerator: the update is (alpha / rank) B A."""
    _needs_lora(cfg, "lora_alpha")
    return {"lora.alpha": number(v, cfg.lora.alpha)}


@mutation("lora_dropout", group="finetune", variants=("<p>",), examples=lambda c: ["0.0", "0.05", "0.1"])
def lora_dropout(cfg, v):
    """Dropout on the adapters' input."""
    _needs_lora(cfg, "lora_dropout")
    return {"lora.dropout": number(v)}


@mutation("lora_targets", group="finetune", variants=(*LORA_TARGETS, "<pattern>,<pattern>"))
def lora_targets(cfg, v):
    """Which linear layers get adapters: attn (qkv, proj), mlp (fc, proj), all, qkv, or module name patterns."""
    _needs_lora(cfg, "lora_targets")
    targets = LORA_TARGETS.get(v) or [t for t in v.split(",") if t]
    if not targets or any(not all(ch.isalnum() or ch in "._*?[]" for ch in t) for t in targets):
        raise BadVariant(f"unknown target set {v!r}")
    return {"lora.targets": targets}


CHAT_FORMATS = ("chatml", "llama3", "alpaca", "template")


@mutation("chat_format", group="finetune", variants=CHAT_FORMATS)
def chat_format(cfg, v):
    """How SFT / DPO examples are rendered: ChatML, Llama 3, Alpaca, or the base checkpoint's own template."""
    return {"data.chat_format": choice(v, CHAT_FORMATS)}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
@mutation("curriculum", group="data", variants=("none", "length", "loss"))
def curriculum(cfg, v):
    """Order of training examples: none, short-to-long (length), or easy-to-hard by a reference model (loss)."""
    v = choice(v, ("none", "length", "loss"))
    if v == "loss" and not cfg.data.curriculum_model:
        raise ConfigError("curriculum 'loss' scores examples with a reference model: set data.curriculum_model "
                          "to a run directory (python -m foundry.mutate curriculum loss "
                          "--set data.curriculum_model=runs/baseline)")
    return {"data.curriculum": v}


@mutation("data_order", group="data", variants=("random", "sequential"))
def data_order(cfg, v):
    """Training windows drawn at random (nanoGPT) or read sequentially."""
    return {"data.order": choice(v, ("random", "sequential"))}


# --------------------------------------------------------------------------------------------------
# Control
# --------------------------------------------------------------------------------------------------
@mutation("seed", group="control", variants=("<offset>",), examples=lambda c: ["1000"])
def seed(cfg, v):
    """Null mutation: the same experiment under other seeds (offset added). A sweep against it measures
    seed noise, and must promote nothing."""
    off = integer(v)
    if off == 0:
        return {}
    return {"training.seed": cfg.training.seed + off}
