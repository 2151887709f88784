"""Feed-forward blocks. Each maps x (B, T, C) -> (B, T, C); hidden width is `cfg.mlp_hidden`.

Gated variants hold one fused `fc` (C -> 2H, [gate | up]) and `proj` (H -> C): plain nn.Linear layers a
LoRA transform can wrap. A block that adds a training loss (MoE) stores it in `self.aux_loss`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ModelConfig
from foundry.modules.registries import MLP


@MLP.register("gelu")
class GeluMLP(nn.Module):
    """GPT-2 MLP (Radford et al. 2019): Linear(C, H) -> GELU (Hendrycks & Gimpel 2016) -> Linear(H, C).

    Exact (erf) GELU, as nanoGPT and PyTorch's default: on AVX2 CPUs it is about 2x faster than the tanh form
    (forward+backward of a (768, 512) activation: ~1.1 vs ~2.4 ms). `gelu_tanh` is GPT-2's own approximation."""

    approximate = "none"

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        hidden = hidden or cfg.mlp_hidden
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.has_bias("mlp"))
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.has_bias("mlp"))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


@MLP.register("gelu_tanh")
class GeluTanhMLP(GeluMLP):
    """GPT-2's MLP exactly (Radford et al. 2019): GELU in the tanh approximation of Hendrycks & Gimpel 2016, as in
    OpenAI's checkpoints and Hugging Face's `gelu_new`."""

    approximate = "tanh"


class GatedMLP(nn.Module):
    """GLU family (Shazeer 2020, "GLU Variants Improve Transformer"): proj(act(gate) * up)."""

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        hidden = hidden or cfg.mlp_hidden
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.has_bias("mlp"))  # [gate | up]
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.has_bias("mlp"))
        self.dropout = nn.Dropout(cfg.dropout)

    def act(self, gate: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.dropout(self.proj(self.act(gate) * up))


@MLP.register("swiglu")
class SwiGLU(GatedMLP):
    """SwiGLU (Shazeer 2020; Llama): SiLU-gated linear unit."""

    def act(self, gate):
        return F.silu(gate)


@MLP.register("glu")
class GLU(GatedMLP):
    """GLU (Dauphin et al. 2017; as an MLP, Shazeer 2020): sigmoid-gated linear unit."""

    def act(self, gate):
        return torch.sigmoid(gate)


@MLP.register("reglu")
class ReGLU(GatedMLP):
    """ReGLU (Shazeer 2020): ReLU-gated linear unit."""

    def act(self, gate):
        return F.relu(gate)


@MLP.register("geglu")
class GeGLU(GatedMLP):
    """GeGLU (Shazeer 2020; Gemma): GELU-gated linear unit (exact GELU)."""

    def act(self, gate):
        return F.gelu(gate)


@MLP.register("relu2")
class ReLU2(GeluMLP):
    """Squared ReLU (So et al. 2021, Primer): Linear -> relu(x)^2 -> Linear, not gated (hidden ratio 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x)).square()))


# --------------------------------------------------------------------------------------------------
# Mixture of experts
# --------------------------------------------------------------------------------------------------
@MLP.register("moe")
class MoE(nn.Module):
    """Mixture of experts (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021): a linear `router`
    sends each token to its top-k of `n_experts` MLPs (`moe.expert` names their type), weighted by the router
    probabilities (renormalised over the k chosen when k > 1). In training each expert takes at most
    capacity = ceil(capacity_factor * tokens * k / n_experts) tokens, earliest positions first; a token over capacity is
    dropped by that expert (only the residual carries it). Evaluation and decoding drop nothing, so a token's
    output never depends on other tokens. `aux_loss` = aux_loss_coef * Switch load-balancing loss
    n_experts * sum_e f_e * P_e (f_e: share of routed slots sent to e, P_e: mean router probability of e).
    `shared_expert` adds one always-on dense MLP (DeepSeekMoE, Dai et al. 2024)."""
    options = ("model_args.moe",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        m = cfg.moe
        Expert = MLP.get(m.expert)
        self.n_experts, self.top_k, self.capacity_factor, self.coef = m.n_experts, m.top_k, m.capacity_factor, m.aux_loss_coef
        self.router = nn.Linear(cfg.n_embd, m.n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(cfg, hidden) for _ in range(m.n_experts))
        self.shared = Expert(cfg, hidden) if m.shared_expert else None
        self.aux_loss: torch.Tensor | None = None
        self.drop_fraction = 0.0  # share of routed (token, expert) slots dropped in the last forward

    def capacity(self, n_tokens: int) -> int:
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.transpose(0, 1).reshape(-1, C)                          # (N, C), time-major: t=0 of every row first
        N, E, k = flat.shape[0], self.n_experts, self.top_k
        probs = self.router(flat).float().softmax(dim=-1)                # (N, E)
        weight, expert = probs.topk(k, dim=-1)                           # (N, k) each
        if k > 1:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        # one slot per (token, choice), time-major: a token's place in an expert's queue depends only on
        # tokens at earlier (or equal) positions, so capacity dropping never lets a later token change it
        onehot = F.one_hot(expert.reshape(-1), E)                        # (N*k, E)
        keep = torch.ones(N * k, dtype=torch.bool, device=x.device)
        if self.training:
            place = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1      # (N*k,) index in its expert's queue
            keep = place < self.capacity(N)
        self.drop_fraction = float(1.0 - keep.float().mean()) if self.training else 0.0
        out = torch.zeros_like(flat)
        token = torch.arange(N, device=x.device).repeat_interleave(k)    # (N*k,) token of each slot
        slot_expert, slot_weight = expert.reshape(-1), weight.reshape(-1)
        for e, mod in enumerate(self.experts):
            # an expert with no tokens still runs (on none), so its weights join the graph with zero gradient
            # and DDP does not stop on unused parameters
            sel = ((slot_expert == e) & keep).nonzero(as_tuple=True)[0]
            y = mod(flat[token[sel]][None])[0]                           # (n_e, C)
            out.index_add_(0, token[sel], (y * slot_weight[sel, None]).to(out.dtype))
        if self.shared is not None:
            out = out + self.shared(flat[None])[0].to(out.dtype)
        # Switch load balancing: minimised (= 1) when routed slots and probability mass are both uniform
        f = onehot.float().mean(dim=0)                                   # (E,) share of slots
        P = probs.mean(dim=0)                                            # (E,)
        self.aux_loss = self.coef * E * (f * P).sum()
        return out.view(T, B, C).transpose(0, 1)
