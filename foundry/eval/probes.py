"""Synthetic probes for small models, where GSM8K and MMLU sit at chance: train a fresh copy of the
architecture on a seeded synthetic task for a few hundred steps, then test it on held-out sequences.

A probe measures what an architecture can learn to do with its context, so it is run on the TARGET's model
config (`model_args`), not on its trained weights: the vocabulary is the probe's own and `block_size` is
raised to the probe's length if needed. Every number is seeded (data, initialisation), so a rerun gives the
same score. Probes (each a small registered class with `sample(n, generator) -> (x, y)`; y = -1 where no
answer is asked):

  mqar        multi-query associative recall (Arora et al. 2023, "Zoology"): key-value pairs, then queries
              of the keys in a new order; answer each with its value. Chance 1/n_values.
  copy        copying / induction (Olsson et al. 2022): a random string, a separator, then the string again;
              every token of the copy is predicted. Chance 1/n_symbols.
  arithmetic  small-number addition "a + b = c" packed several per sequence; c is predicted at "=".
              Chance = the most frequent sum's share (the best answer that ignores a and b).

`ablation` turns attention off to check a probe depends on it: "remove" replaces every block's attention
output by zeros; "self" lets each token attend only to itself (a mask), so no token sees another.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from foundry.eval.runners import RUNNERS, EvalContext
from foundry.registry import Registry

PROBES: Registry = Registry("probe")


@PROBES.register("mqar")
class MQAR:
    """Multi-query associative recall: k1 v1 k2 v2 ... kN vN  q1 a1 q2 a2 ...; ids: keys, then values."""

    def __init__(self, n_pairs: int = 8, n_keys: int = 16, n_values: int = 16, n_queries: int | None = None):
        if n_pairs > n_keys:
            raise ValueError(f"mqar: n_pairs={n_pairs} needs at least as many distinct keys (n_keys={n_keys})")
        self.n_pairs, self.n_keys, self.n_values = n_pairs, n_keys, n_values
        self.n_queries = n_queries or n_pairs
        self.vocab_size = n_keys + n_values
        self.seq_len = 2 * n_pairs + 2 * self.n_queries
        self.chance = 1.0 / n_values

    def sample(self, n: int, g: torch.Generator):
        P, Q = self.n_pairs, self.n_queries
        keys = torch.argsort(torch.rand(n, self.n_keys, generator=g), dim=1)[:, :P]          # (n, P) distinct
        vals = torch.randint(self.n_keys, self.vocab_size, (n, P), generator=g)              # (n, P)
        which = torch.stack([torch.randperm(P, generator=g)[:Q] if Q <= P else torch.randint(P, (Q,), generator=g)
                             for _ in range(n)])                                              # (n, Q)
        x = torch.empty(n, self.seq_len, dtype=torch.long)
        x[:, 0:2 * P:2], x[:, 1:2 * P:2] = keys, vals
        x[:, 2 * P::2], x[:, 2 * P + 1::2] = keys.gather(1, which), vals.gather(1, which)
        y = torch.full_like(x, -1)
        y[:, 2 * P:-1:2] = x[:, 2 * P + 1::2]      # at each query, predict its value
        return x, y


@PROBES.register("copy")
class Copy:
    """s_1..s_L  SEP  s_1..s_L: the second copy is predicted token by token (an induction head's job)."""

    def __init__(self, length: int = 12, n_symbols: int = 16):
        self.length, self.n_symbols = length, n_symbols
        self.sep = n_symbols
        self.vocab_size = n_symbols + 1
        self.seq_len = 2 * length + 1
        self.chance = 1.0 / n_symbols

    def sample(self, n: int, g: torch.Generator):
        s = torch.randint(self.n_symbols, (n, self.length), generator=g)
        x = torch.cat([s, torch.full((n, 1), self.sep), s], dim=1)
        y = torch.full_like(x, -1)
        y[:, self.length:-1] = s                    # from SEP on, predict the next symbol of the copy
        return x, y


@PROBES.register("arithmetic")
class Arithmetic:
    """a + b = c ; ... with a, b in [0, max_operand]; ids: numbers 0..2*max_operand, then '+', '=', ';'."""

    def __init__(self, max_operand: int = 9, n_problems: int = 6):
        self.max_operand, self.n_problems = max_operand, n_problems
        self.n_numbers = 2 * max_operand + 1
        self.plus, self.eq, self.semi = self.n_numbers, self.n_numbers + 1, self.n_numbers + 2
        self.vocab_size = self.n_numbers + 3
        self.seq_len = 6 * n_problems
        m = max_operand + 1
        self.chance = m / (m * m)                   # the commonest sum (= max_operand) occurs m times of m^2

    def sample(self, n: int, g: torch.Generator):
        a = torch.randint(self.max_operand + 1, (n, self.n_problems), generator=g)
        b = torch.randint(self.max_operand + 1, (n, self.n_problems), generator=g)
        x = torch.empty(n, self.n_problems, 6, dtype=torch.long)
        x[..., 0], x[..., 1], x[..., 2], x[..., 3], x[..., 4], x[..., 5] = a, self.plus, b, self.eq, a + b, self.semi
        y = torch.full_like(x, -1)
        y[..., 3] = a + b                           # at "=", predict the sum
        return x.view(n, -1), y.view(n, -1)


# --------------------------------------------------------------------------------------------------
# Ablations: evaluation-side transforms of a built model (never registered variants)
# --------------------------------------------------------------------------------------------------
class _NoAttention(nn.Module):
    """Stands in for a block's attention and contributes nothing to the residual stream."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def ablate(model: nn.Module, ablation: str | None):
    """Apply an ablation to a GPT in place; return the mask to pass to forward (or None)."""
    if ablation in (None, "none"):
        return None
    if ablation == "remove":
        for block in model.blocks:
            block.attn = _NoAttention()
        return None
    if ablation == "self":
        return "self"
    raise ValueError(f"unknown ablation {ablation!r}; use 'remove', 'self' or None")


def _mask_for(kind, T: int, device):
    if kind == "self":
        return torch.eye(T, dtype=torch.bool, device=device)[None, None]   # (1, 1, T, T): only itself
    return None


# --------------------------------------------------------------------------------------------------
# Train, then test
# --------------------------------------------------------------------------------------------------
def run_probe(model_cfg, probe, *, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
              weight_decay: float = 0.0, test_size: int = 256, seed: int = 0, ablation: str | None = None,
              device: str = "cpu") -> tuple[dict, list[dict]]:
    """Train a fresh model of `model_cfg`'s architecture on `probe`, then test it; (summary, per-sequence rows)."""
    from foundry.model import GPT
    from foundry.trainer.core import train_step

    cfg = dataclasses.replace(model_cfg, vocab_size=probe.vocab_size, dropout=0.0,
                              block_size=max(model_cfg.block_size, probe.seq_len))
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    mask_kind = ablate(model, ablation)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)
                                              * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    mask = _mask_for(mask_kind, probe.seq_len, device)

    def loss_of(batch):  # cross-entropy on the probe's asked positions (targets -1 elsewhere)
        x, y = (t.to(device) for t in batch)
        logits = model(x, mask=mask)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1), ignore_index=-1), {}

    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):  # the training core's step: backward, clip to 1.0, optimiser step
        loss = train_step(model, opt, lambda: probe.sample(batch_size, g), loss_of, clip=1.0).loss
        sched.step()
    model.eval()
    tg = torch.Generator().manual_seed(seed + 10_000)        # held-out sequences, never trained on
    x, y = probe.sample(test_size, tg)
    with torch.no_grad():
        pred = model(x.to(device), mask=mask).argmax(-1).cpu()
    asked = y != -1
    right = (pred == y) & asked
    per_seq = right.sum(1).float() / asked.sum(1).float()
    rows = [{"id": f"{i}", "correct": float(per_seq[i]), "all_correct": bool(per_seq[i] == 1.0)}
            for i in range(test_size)]
    acc = float(right.sum() / asked.sum())
    return {"score": acc, "chance": probe.chance, "n": test_size, "final_train_loss": float(loss.detach()),
            "steps": steps, "ablation": ablation or "none"}, rows


PROBE_TRAIN_KEYS = ("steps", "batch_size", "lr", "weight_decay", "test_size", "seed", "ablation")


@RUNNERS.register("probe")
class ProbeRunner:
    """options: probe (mqar | copy | arithmetic), the probe's own sizes, and steps, batch_size, lr,
    weight_decay, test_size, seed, ablation (training protocol)."""

    @staticmethod
    def allowed_options(opts: dict) -> tuple:
        import inspect

        probe = PROBES.get(opts.get("probe", ""))   # unknown probe: "did you mean"
        return ("probe", *PROBE_TRAIN_KEYS, *inspect.signature(probe.__init__).parameters.keys() - {"self"})

    def run(self, spec, lm, ctx: EvalContext):
        opts = {**spec.options, **ctx.options}
        name = opts.pop("probe")
        train = {k: opts.pop(k) for k in PROBE_TRAIN_KEYS if k in opts}
        probe = PROBES.get(name)(**opts)
        if ctx.limit is not None:
            train["test_size"] = min(train.get("test_size", 256), ctx.limit)
        if ctx.model_cfg is None:
            raise ValueError(f"task {spec.name} trains the target's architecture, but the target has no model "
                             f"config (a foundry GPT's .cfg)")
        ctx.log(f"{spec.name}: training a fresh {name} model for {train.get('steps', 300)} steps")
        summary, rows = run_probe(ctx.model_cfg, probe, device=ctx.device, **train)
        summary["chance"] = probe.chance
        summary["metric"] = spec.metric
        return summary, [{**r, "id": f"{spec.name}/{r['id']}"} for r in rows]
