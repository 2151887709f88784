"""An independent plain-PyTorch stand-in for nanoGPT's CPU Tiny Shakespeare run, for side-by-side timing.

nanoGPT's code is not on this machine and is not copied here. This file re-implements, from its documented
behaviour, the work one nanoGPT training iteration does in the README's CPU command
(`--device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, config train_shakespeare_char: bias False, lr 1e-3,
min_lr 1e-4, warmup 100, beta2 0.99, weight decay 0.1, clip 1.0), so that its speed can be measured in the same
process and window as foundry's:

- model: GPT-2 block (pre-LayerNorm without bias, fused qkv Linear, F.scaled_dot_product_attention causal,
  GELU MLP 4x, learned positions, tied embeddings), fp32, no autocast on CPU;
- data: a fresh np.memmap of train.bin per batch, torch.randint starts, a Python list of slices stacked;
- step: forward, loss.backward(), clip_grad_norm_(1.0), AdamW (decay on >= 2-D params; on CPU nanoGPT does
  not ask for fused, and torch's default there is the per-parameter for-loop implementation), zero_grad,
  lr set by warmup+cosine, loss.item() every iteration (log_interval=1).

It is a reference for *speed* (and a sanity check of loss); it is not part of foundry.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RefBlock(nn.Module):
    def __init__(self, C: int, nh: int):
        super().__init__()
        self.nh = nh
        self.ln1_w = nn.Parameter(torch.ones(C))
        self.attn_qkv = nn.Linear(C, 3 * C, bias=False)
        self.attn_proj = nn.Linear(C, C, bias=False)
        self.ln2_w = nn.Parameter(torch.ones(C))
        self.fc = nn.Linear(C, 4 * C, bias=False)
        self.proj = nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        h = F.layer_norm(x, (C,), self.ln1_w, None, 1e-5)
        q, k, v = self.attn_qkv(h).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nh, C // self.nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        h = F.layer_norm(x, (C,), self.ln2_w, None, 1e-5)
        return x + self.proj(F.gelu(self.fc(h)))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, T: int, L: int, nh: int, C: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(RefBlock(C, nh) for _ in range(L))
        self.lnf_w = nn.Parameter(torch.ones(C))
        self.head = nn.Linear(C, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.head(F.layer_norm(x, (x.shape[-1],), self.lnf_w, None, 1e-5))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class NanoGPTReference:
    """One object per run: `step()` does one training iteration and returns its loss (a Python float)."""

    def __init__(self, data_dir: str, vocab: int, *, batch_size=12, block_size=64, n_layer=4, n_head=4, n_embd=128,
                 lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000, seed=1337):
        torch.manual_seed(seed)
        self.train_bin = os.path.join(data_dir, "train.bin")
        self.B, self.T = batch_size, block_size
        self.lr, self.min_lr, self.warmup, self.decay = lr, min_lr, warmup, decay_iters
        self.model = RefGPT(vocab, block_size, n_layer, n_head, n_embd)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                     lr=lr, betas=(0.9, 0.99))
        self.it = 0

    def get_batch(self):
        data = np.memmap(self.train_bin, dtype=np.uint16, mode="r")  # re-opened per batch, as nanoGPT does
        ix = torch.randint(len(data) - self.T, (self.B,))
        x = torch.stack([torch.from_numpy(data[i:i + self.T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.T].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(self, it):
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if it > self.decay:
            return self.min_lr
        r = (it - self.warmup) / (self.decay - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (self.lr - self.min_lr)

    def step(self) -> float:
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.it)
        x, y = self.get_batch()
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return loss.item()

    @torch.no_grad()
    def val_loss(self, val: np.ndarray, n_windows: int = 240) -> float:
        """Mean loss over the first n_windows non-overlapping windows of the validation split."""
        self.model.eval()
        ids = np.asarray(val[: n_windows * self.T + 1], dtype=np.int64)
        n = (len(ids) - 1) // self.T
        x = torch.from_numpy(ids[: n * self.T].reshape(n, self.T))
        y = torch.from_numpy(ids[1: n * self.T + 1].reshape(n, self.T))
        loss = float(self.model(x, y))
        self.model.train()
        return loss


def main(argv=None) -> int:
    """Train the stand-in in a process of its own (as nanoGPT runs), printing nanoGPT-style lines:
    `iter N: loss L, time Tms` per iteration, then one JSON line with the validation losses when --eval."""
    import argparse
    import json
    import time

    p = argparse.ArgumentParser(description="nanoGPT CPU-run stand-in (see the module docstring)")
    p.add_argument("--data", required=True, help="prepared directory with train.bin / val.bin (uint16)")
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-windows", type=int, default=0,
                   help="after training, val loss on the first N windows and on the whole split (0: no eval)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = NanoGPTReference(args.data, args.vocab, seed=args.seed)
    t0 = time.perf_counter()
    for it in range(args.iters):
        loss = ref.step()
        t1 = time.perf_counter()
        print(f"iter {it}: loss {loss:.4f}, time {(t1 - t0) * 1000:.2f}ms", flush=True)
        t0 = t1
    if args.eval_windows:
        val = np.memmap(os.path.join(args.data, "val.bin"), dtype=np.uint16, mode="r")
        whole = (len(val) - 1) // ref.T
        print(json.dumps({"val_loss": ref.val_loss(val, args.eval_windows), "val_loss_whole_split": ref.val_loss(val, whole)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
