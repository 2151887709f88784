"""LoRA as a transform of a built model (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    apply_lora(model, cfg.lora)      wraps the nn.Linear layers whose names match lora.targets, freezes the rest
    merge(model) / unmerge(model)    folds (alpha / r) * B A into the base weights and back
    with adapters_disabled(model):   the base model (DPO's reference: no second copy of the weights)
    adapter_state(model)             the adapter tensors alone (what a LoRA run's checkpoint stores)
    save_peft / load_peft            Hugging Face PEFT's format (adapter_model.safetensors + adapter_config.json)

The model code knows nothing of this: a wrapped layer is an `nn.Linear` subclass that keeps the original
`weight` and `bias` parameters under their names (so base checkpoints load unchanged) and adds `lora_A`
(n * r, in) and `lora_B` (out, r). A fused projection is n projections side by side (attention's `qkv` is
[q | k | v], a gated MLP's `fc` is [gate | up]); each slice gets its own rank-r adapter, exactly as PEFT's
separate q_proj / k_proj / v_proj (or gate_proj / up_proj) adapters would, so export and import are exact.
B starts at zero, so a freshly wrapped model computes what the base computes.
"""
from __future__ import annotations

import fnmatch
import math
import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ConfigError, LoRAConfig


# --------------------------------------------------------------------------------------------------
# The wrapped layer
# --------------------------------------------------------------------------------------------------
class LoRALinear(nn.Linear):
    """base(x) + (alpha / r) * [B_1 A_1 x | ... | B_n A_n x] over the n output slices `splits`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, splits: list[int]):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias           # the base parameters, same names, frozen
        assert sum(splits) == base.out_features, (splits, base.out_features)
        self.rank, self.alpha, self.splits = rank, alpha, list(splits)
        self.scaling = alpha / rank
        n, dev, dt = len(splits), base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(n * rank, base.in_features, device=dev, dtype=dt))  # (n r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))     # (out, r)
        for i in range(n):  # PEFT's (and the paper's reference code's) init: Kaiming-uniform A, zero B
            nn.init.kaiming_uniform_(self.lora_A.data[i * rank:(i + 1) * rank], a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged, self.enabled = False, True

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., n r)
        if len(self.splits) == 1:
            return F.linear(h, self.lora_B) * self.scaling  # (..., out)
        r, outs, o = self.rank, [], 0
        for i, size in enumerate(self.splits):  # slice i: B_i (size, r) on its own r columns of h
            outs.append(F.linear(h[..., i * r:(i + 1) * r], self.lora_B[o:o + size]))
            o += size
        return torch.cat(outs, dim=-1) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """(out, in): the dense update (alpha / r) * blockrows(B_i A_i)."""
        r, rows, o = self.rank, [], 0
        for i, size in enumerate(self.splits):
            rows.append(self.lora_B[o:o + size] @ self.lora_A[i * r:(i + 1) * r])
            o += size
        return torch.cat(rows, dim=0) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return y
        return y + self.delta(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, splits={self.splits}"


# --------------------------------------------------------------------------------------------------
# Choosing and wrapping layers
# --------------------------------------------------------------------------------------------------
def _splits(parent: nn.Module, child: str, layer: nn.Linear) -> list[int]:
    """Output slices of a fused projection, read from the module that owns it."""
    if child == "qkv" and all(hasattr(parent, a) for a in ("n_head", "n_kv_head", "head_dim")):
        q, kv = parent.n_head * parent.head_dim, parent.n_kv_head * parent.head_dim
        if q + 2 * kv == layer.out_features:
            return [q, kv, kv]
    from foundry.modules.mlp import GatedMLP

    if child == "fc" and isinstance(parent, GatedMLP):
        return [layer.out_features // 2] * 2
    return [layer.out_features]


def matches(name: str, pattern: str) -> bool:
    """`attn.qkv` matches `blocks.3.attn.qkv`; globs (`blocks.0.*`, `*.mlp.*`) match the full name."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _summarise(names: list[str]) -> str:
    """Linear layer names with block indices folded: blocks.*.attn.qkv (x4), lm_head."""
    seen: dict[str, int] = {}
    for n in names:
        k = re.sub(r"\.\d+\.", ".*.", n)
        seen[k] = seen.get(k, 0) + 1
    return ", ".join(k if c == 1 else f"{k} (x{c})" for k, c in seen.items())


def apply_lora(model: nn.Module, lc: LoRAConfig) -> list[str]:
    """Wrap the matching nn.Linear layers in place, freeze every other parameter; returns the wrapped names.
    A pattern that matches no linear layer fails, listing the model's linear layers."""
    if lc.rank < 1:
        raise ConfigError("lora.rank must be >= 1 to apply LoRA")
    names = linear_names(model)
    tied = {id(p) for n, p in model.named_parameters() if n == "wte.weight"}
    for pattern in lc.targets:
        if not any(matches(n, pattern) for n in names):
            raise ConfigError(f"lora.targets: {pattern!r} matches none of the model's linear layers: "
                              f"{_summarise(names)}")
    chosen = [n for n in names if any(matches(n, p) for p in lc.targets)]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if isinstance(layer, LoRALinear):
            continue
        if id(layer.weight) in tied:
            raise ConfigError(f"lora.targets: {name} shares its weight with the token embedding (tied); "
                              f"leave it out of lora.targets")
        setattr(parent, child, LoRALinear(layer, lc.rank, lc.alpha, lc.dropout, _splits(parent, child, layer)))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def is_adapter_key(key: str) -> bool:
    return key.endswith(".lora_A") or key.endswith(".lora_B")


# --------------------------------------------------------------------------------------------------
# Merge, unmerge, disable
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference at the base model's speed); undo with unmerge."""
    for m in lora_layers(model).values():
        if not m.merged:
            m.weight.add_(m.delta_weight().to(m.weight.dtype))
            m.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        if m.merged:
            m.weight.sub_(m.delta_weight().to(m.weight.dtype))
            m.merged = False


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model's outputs inside the block (the adapters are skipped, not zeroed); merged adapters are
    unmerged first and merged again after."""
    layers = list(lora_layers(model).values())
    was_merged = any(m.merged for m in layers)
    if was_merged:
        unmerge(model)
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True
        if was_merged:
            merge(model)


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the merged model, under the plain (unwrapped) names: an ordinary GPT's."""
    merge(model)
    try:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if not is_adapter_key(k)}
    finally:
        unmerge(model)


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------
def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return str(n)


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, tied weights counted once."""
    params = list(model.parameters())  # de-duplicated by nn.Module
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_trainable(model: nn.Module) -> str:
    """`trainable 0.52% (41.9M of 8.03B)`."""
    k, n = trainable_share(model)
    return f"trainable {100 * k / n:.2f}% ({_fmt(k)} of {_fmt(n)})"


# --------------------------------------------------------------------------------------------------
# Adapter files: foundry's (the run's checkpoints) and PEFT's
# --------------------------------------------------------------------------------------------------
def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if is_adapter_key(k)}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapters") -> None:
    """Load adapter tensors into an already wrapped model; every adapter must be given, nothing else."""
    own = {k for k in model.state_dict() if is_adapter_key(k)}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(f"{source}: the adapters do not match the model (rank/targets differ?): missing "
                         f"{missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict(state, strict=False)


PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def hf_linear_names(model) -> dict[str, list[str]]:
    """foundry linear layer -> the Hugging Face module name of each of its output slices, read from the zoo's
    key map of the architecture the model exports as (a fused qkv -> its q, k, v projections)."""
    from foundry.zoo.architectures import choose_architecture

    arch = choose_architecture(model.cfg)
    out = {}
    for name in linear_names(model):
        hit = arch.rule_for(name + ".weight")
        if hit is None:
            continue
        rule, i = hit
        if rule.op not in ("copy", "cat"):
            raise ValueError(f"{name}: {arch.name} stores it as a {rule.op!r} of another layout; PEFT export "
                             f"supports architectures whose projections are plain nn.Linear weights")
        out[name] = [t.replace("{i}", i).removesuffix(".weight") for t in rule.theirs]
    return out


def save_peft(model: nn.Module, out_dir, base_model_name_or_path: str) -> None:
    """Write PEFT's LoRA format: adapter_config.json and adapter_model.safetensors with keys
    `base_model.model.<HF module>.lora_A.weight` (r, in) / `.lora_B.weight` (out, r), one pair per HF
    projection (a fused slice's A is its own r rows; its B the slice's rows). The HF module names come from
    the zoo's key map of the architecture (`foundry.zoo`), so `peft.PeftModel.from_pretrained` on the
    exported base model computes the same logits."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from foundry.config import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_names = hf_linear_names(model)   # foundry linear name -> [HF module name per output slice]
    tensors, modules = {}, set()
    for name, m in lora_layers(model).items():
        targets = hf_names.get(name)
        if targets is None or len(targets) != len(m.splits):
            raise ValueError(f"{name}: no Hugging Face equivalent with {len(m.splits)} slice(s) in the zoo's key "
                             f"map, so the adapter cannot be written in PEFT's format")
        r, o = m.rank, 0
        for i, (hf, size) in enumerate(zip(targets, m.splits)):
            tensors[f"base_model.model.{hf}.lora_A.weight"] = m.lora_A[i * r:(i + 1) * r].detach().contiguous().cpu()
            tensors[f"base_model.model.{hf}.lora_B.weight"] = m.lora_B[o:o + size].detach().contiguous().cpu()
            modules.add(hf.rsplit(".", 1)[-1])
            o += size
    first = next(iter(lora_layers(model).values()))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_model_name_or_path),
              "r": first.rank, "lora_alpha": first.alpha, "lora_dropout": float(getattr(first.lora_dropout, "p", 0.0)),
              "target_modules": sorted(modules), "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None}
    tmp = out / (PEFT_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / PEFT_WEIGHTS)
    write_text_atomic(out / PEFT_CONFIG, json.dumps(config, indent=2))


def read_peft(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of a PEFT LoRA directory, checked to be a plain LoRA we can represent."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    p = Path(path)
    for f in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (p / f).is_file():
            raise FileNotFoundError(f"{p}: no {f}; a PEFT adapter directory holds {PEFT_CONFIG} and {PEFT_WEIGHTS}")
    conf = json.loads((p / PEFT_CONFIG).read_text())
    if conf.get("peft_type", "LORA") != "LORA" or conf.get("use_dora") or conf.get("use_rslora"):
        raise ValueError(f"{p}: only plain LoRA adapters load (peft_type LORA, no DoRA / rsLoRA); got {conf}")
    if conf.get("rank_pattern") or conf.get("alpha_pattern"):
        raise ValueError(f"{p}: per-module ranks or alphas (rank_pattern / alpha_pattern) are not supported")
    return conf, load_file(str(p / PEFT_WEIGHTS))


def load_peft(model: nn.Module, path) -> list[str]:
    """Wrap `model` (a plain foundry GPT of the adapters' base) with the adapters of a PEFT LoRA directory and load them; returns
    the wrapped foundry layer names. Every HF projection of a fused layer must be adapted (PEFT on q and v
    only leaves k without an adapter: its slice gets zero B, i.e. no update)."""
    conf, tensors = read_peft(path)
    hf_names = hf_linear_names(model)
    r, alpha = int(conf["r"]), float(conf["lora_alpha"])
    targets = [name for name, hfs in hf_names.items()
               if any(f"base_model.model.{hf}.lora_A.weight" in tensors for hf in hfs)]
    if not targets:
        raise ValueError(f"{path}: none of its tensors names a projection of this model "
                         f"(first keys: {sorted(tensors)[:3]})")
    apply_lora(model, LoRAConfig(rank=r, alpha=alpha, dropout=float(conf.get("lora_dropout", 0.0)),
                                 targets=[f"{t}" for t in targets]))
    used = set()
    with torch.no_grad():
        for name in targets:
            m = model.get_submodule(name)
            o = 0
            for i, (hf, size) in enumerate(zip(hf_names[name], m.splits)):
                a_key, b_key = f"base_model.model.{hf}.lora_A.weight", f"base_model.model.{hf}.lora_B.weight"
                if a_key in tensors:
                    m.lora_A[i * r:(i + 1) * r].copy_(tensors[a_key])
                    m.lora_B[o:o + size].copy_(tensors[b_key])
                    used |= {a_key, b_key}
                else:
                    m.lora_B[o:o + size].zero_()
                o += size
    left = sorted(set(tensors) - used)
    if left:
        raise ValueError(f"{path}: tensors for modules this model has no adapter for: {left[:4]}")
    return targets
