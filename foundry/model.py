"""GPT assembled from the component registries. Topology only: which block goes where, nothing else.

    model = GPT(cfg.model_args)               # cfg from foundry.config.load_experiment
    logits = model(idx)                        # idx (B, T) int64 -> (B, T, vocab_size)
    loss, info = model(idx, targets)           # training path; info holds the main and auxiliary losses
    out = model.generate(prompts, 100, temperature=0.8, top_k=50)

State-dict names (stable; the zoo's key maps and LoRA's name patterns rely on them):
    wte.weight, pos.*, blocks.{i}.norm1/attn/norm2/mlp.*, norm_f.*, lm_head.weight
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ModelConfig
from foundry.modules import ATTENTION, LOSS, MLP, NORM, POSITION


class Block(nn.Module):
    """One transformer layer: attention then MLP, each in a residual branch, normalised as `norm_placement`
    says: `pre` (GPT-2, Llama), `post` (the original Transformer), `sandwich` (pre plus a norm on each branch
    output, as in CogView and Gemma 2)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        Norm = NORM.get(cfg.norm)
        self.placement = cfg.norm_placement
        self.norm1 = Norm(cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = ATTENTION.get(cfg.attention)(cfg, layer_idx)
        self.norm2 = Norm(cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP.get(cfg.mlp)(cfg)
        if self.placement == "sandwich":
            self.post_norm1 = Norm(cfg.n_embd, cfg.norm_eps, cfg.bias)
            self.post_norm2 = Norm(cfg.n_embd, cfg.norm_eps, cfg.bias)

    def forward(self, x, pos, positions, cache=None, mask=None):
        if self.placement == "pre":
            x = x + self.attn(self.norm1(x), pos, positions, cache, mask)
            return x + self.mlp(self.norm2(x))
        if self.placement == "post":
            x = self.norm1(x + self.attn(x, pos, positions, cache, mask))
            return self.norm2(x + self.mlp(x))
        x = x + self.post_norm1(self.attn(self.norm1(x), pos, positions, cache, mask))
        return x + self.post_norm2(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, loss_fn: nn.Module | None = None):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model_args.vocab_size is unset: train() fills it from the data's tokenizer; "
                             "when building a model by hand, set it (e.g. cfg.replace(...) or ModelConfig(vocab_size=...))")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = POSITION.get(cfg.position)(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        Norm = NORM.get(cfg.norm)
        self.norm_f = Norm(cfg.n_embd, cfg.norm_eps, cfg.bias) if cfg.norm_placement != "post" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.loss_fn = loss_fn if loss_fn is not None else LOSS.get("ce")()
        self._aux_modules: list[nn.Module] | None = None
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance stays put.
        # Convention: inside a block, a Linear named `proj` is one that writes into the residual stream
        # (attn.proj, mlp.proj, and each MoE expert's proj).
        for name, p in self.named_parameters():
            if name.startswith("blocks.") and name.endswith(".proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    # ----------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, caches: list | None = None):
        """idx (B, T) -> logits (B, T, V); with targets (B, T) (-1 = ignored) -> (loss, info).

        positions (T,) or (B, T) override 0..T-1 (packed documents); mask (B, 1, T, Tk) bool limits attention
        further; caches (one per layer, from `new_caches`) turn on incremental decoding.
        """
        B, T = idx.shape
        start = caches[0].length if caches else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        limit = self.pos.max_positions
        if limit is not None and start + T > limit:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={limit}, the length of the "
                             f"learned position table; crop the input or use a relative position encoding")
        x = self.drop(self.pos.embed(self.wte(idx), positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, self.pos, positions, caches[i] if caches else None, mask)
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x)  # (B, T, V)
        main = self.loss_fn(self.lm_head(x), targets)
        aux = self.collect_aux_loss()
        loss = main + aux if aux is not None else main
        return loss, {"loss_main": main.detach(), "aux_loss": aux.detach() if aux is not None else None}

    def collect_aux_loss(self) -> torch.Tensor | None:
        """Sum of auxiliary losses (e.g. MoE load balancing) left by modules during the last forward.

        Modules that produce one declare `self.aux_loss = None` in __init__; they are found once, on the first
        call (after any transform of the built model), not by walking every module on every step."""
        if self._aux_modules is None:
            self._aux_modules = [m for m in self.modules() if m is not self and hasattr(m, "aux_loss")]
        parts = [m.aux_loss for m in self._aux_modules if m.aux_loss is not None]
        return torch.stack(parts).sum() if parts else None

    # ----------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); non_embedding drops the token and learned position tables,
        as in Kaplan et al. 2020 and nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() if self.cfg.tie_embeddings else 0
            if hasattr(self.pos, "wpe"):
                n -= self.pos.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12 L H Q T (PaLM appendix B; nanoGPT's estimate_mfu)."""
        cfg = self.cfg
        T = seq_len or cfg.block_size
        n = sum(p.numel() for p in self.parameters()) - (self.pos.wpe.weight.numel() if hasattr(self.pos, "wpe") else 0)
        if cfg.mlp == "moe":  # only top_k of n_experts run per token
            expert = sum(p.numel() for n_, p in self.named_parameters() if ".experts." in n_)
            n -= expert * (1 - cfg.moe.top_k / cfg.moe.n_experts)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    # ----------------------------------------------------------------------------------------------
    def new_caches(self, batch: int, max_len: int, device=None, dtype=None) -> list:
        p = next(self.parameters())
        return [b.attn.new_cache(batch, max_len, device or p.device, dtype or p.dtype) for b in self.blocks]

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor | Sequence[Sequence[int]], max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 stop_tokens: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True,
                 should_stop: Callable[[int, list[int]], bool] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Sample continuations for a batch of prompts (a (B, T) tensor or lists of ids of any lengths).

        Prompts are left-padded; per-row positions and a key mask keep padding invisible. temperature 0 is
        greedy. Returns the new tokens of each prompt, cut after the first stop token (kept). `should_stop(row,
        new_ids)` ends a row early on any other condition (e.g. a stop string spanning several tokens).
        `on_token(row, id)` is called for each token as it is sampled, stop tokens included (streaming).
        """
        device = next(self.parameters()).device
        rows = [list(map(int, p)) for p in (prompts.tolist() if torch.is_tensor(prompts) else prompts)]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("generate() needs at least one prompt and every prompt needs at least one token")
        B, L = len(rows), max(len(r) for r in rows)
        limit = self.pos.max_positions
        if limit is not None:
            max_new_tokens = min(max_new_tokens, limit - L)
            if max_new_tokens <= 0:
                raise ValueError(f"prompt of {L} tokens leaves no room under block_size={limit}")
        total = L + max_new_tokens
        idx = torch.zeros(B, L, dtype=torch.long, device=device)
        real = torch.zeros(B, total, dtype=torch.bool, device=device)  # key slots holding real tokens
        for b, r in enumerate(rows):
            idx[b, L - len(r):] = torch.tensor(r, device=device)
            real[b, L - len(r):] = True
        offset = (L - real[:, :L].sum(1))  # (B,) padding per row
        stop = set(stop_tokens or [])
        was_training = self.training
        self.eval()
        caches = self.new_caches(B, total) if use_cache else None
        out: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        seq, step_in, t0 = idx, idx, 0
        try:
            for _ in range(max_new_tokens):
                T = step_in.shape[1]
                slots = torch.arange(t0, t0 + T, device=device)
                positions = (slots[None, :] - offset[:, None]).clamp(min=0)  # (B, T)
                k_real = real[:, : t0 + T]
                # query may see real keys; and itself, so a padding row never has an all-masked softmax
                mask = k_real[:, None, None, :] | (torch.arange(t0 + T, device=device)[None, :] == slots[:, None])
                logits = self(step_in, positions=positions, mask=mask, caches=caches)[:, -1, :].float()
                nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                picked = nxt.tolist()  # one device sync per step
                for b in range(B):
                    if not done[b]:
                        out[b].append(picked[b])
                        if on_token is not None:
                            on_token(b, picked[b])
                        done[b] = picked[b] in stop or (should_stop is not None and should_stop(b, out[b]))
                if all(done):
                    break
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                if use_cache:
                    t0, step_in = seq.shape[1] - 1, nxt[:, None]
                else:
                    t0, step_in = 0, seq
        finally:
            self.train(was_training)
        return out


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V): greedy at temperature 0, else top-k then nucleus (Holtzman 2020)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
