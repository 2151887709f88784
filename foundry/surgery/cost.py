"""The cost of a surgery before healing: how far the child moved from its parent, and what it saves.

    cost = surgery_cost(parent, child, heldout)     heldout (N, T + 1) token windows
    cost["kl"]                 mean KL(parent || child) of the next-token distributions, nats/token
    cost["kl_windows"]         the same per held-out window (pairs two children measured on one text)
    cost["ppl_parent"], cost["ppl_child"], cost["ppl_ratio"]      held-out perplexity
    cost["params_parent"], ...["params_child"]                     parameters (tied weights once)
    cost["kv_bytes_parent"], ...["kv_bytes_child"]                 KV cache bytes per token, all layers
    cost["decode_tps_parent"], ...["decode_tps_child"]             greedy decode tokens/s, measured alternating

KL and perplexity are computed on the same windows in one pass per batch, in float32 on the logits.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from foundry.model import GPT


@torch.no_grad()
def next_token_divergence(parent: GPT, child: GPT, windows: torch.Tensor, batch: int = 4) -> dict:
    """KL(parent || child) per predicted token and both perplexities over windows (N, T + 1): inputs
    windows[:, :-1], targets windows[:, 1:]."""
    device = next(child.parameters()).device
    parent.eval(), child.eval()
    kl = nll_p = nll_c = 0.0
    n = 0
    per_window: list[float] = []
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch].to(device)
        x, y = w[:, :-1], w[:, 1:].reshape(-1)
        lp = F.log_softmax(parent(x).float(), dim=-1).flatten(0, 1)   # (B*T, V)
        lc = F.log_softmax(child(x).float(), dim=-1).flatten(0, 1)
        kl_tok = (lp.exp() * (lp - lc)).sum(-1)                        # (B*T,)
        kl += float(kl_tok.sum())
        per_window += kl_tok.view(x.shape[0], -1).mean(1).tolist()
        nll_p += float(F.nll_loss(lp, y, reduction="sum"))
        nll_c += float(F.nll_loss(lc, y, reduction="sum"))
        n += y.numel()
    if n == 0:
        raise ValueError("no held-out windows to measure on")
    return {"kl": kl / n, "ppl_parent": math.exp(nll_p / n), "ppl_child": math.exp(nll_c / n),
            "ppl_ratio": math.exp((nll_c - nll_p) / n), "heldout_tokens": n,
            "kl_windows": per_window}  # per held-out window, for paired comparisons of two children


@torch.no_grad()
def perplexity(model: GPT, windows: torch.Tensor, batch: int = 4) -> float:
    """Held-out perplexity of one model over windows (N, T + 1)."""
    device = next(model.parameters()).device
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch].to(device)
        logits = model(w[:, :-1]).float()
        nll += float(F.cross_entropy(logits.flatten(0, 1), w[:, 1:].reshape(-1), reduction="sum"))
        n += w[:, 1:].numel()
    return math.exp(nll / n)


def kv_bytes_per_token(model: GPT) -> int:
    """KV-cache bytes one token of one sequence costs across all layers, in the model's dtype
    (each attention's cache reports its own: MLA the latent and RoPE keys, GQA its KV heads)."""
    return sum(c.nbytes_per_token() for c in model.new_caches(1, 2))


def param_count(model: GPT) -> int:
    return model.num_params(non_embedding=False)


@torch.no_grad()
def decode_speed(models: dict[str, GPT], prompt: list[int], new_tokens: int = 32, rounds: int = 3) -> dict:
    """Greedy decoding tokens/s of each model (KV cache on), the models taking turns round after round so a
    busy machine slows them alike; the median round of each. One warm-up generation each first."""
    for m in models.values():
        m.generate([prompt], 2, temperature=0)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            out = m.generate([prompt], new_tokens, temperature=0)
            times[name].append(len(out[0]) / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in times.items()}


def surgery_cost(parent: GPT, child: GPT, heldout: torch.Tensor, *, decode_prompt: list[int] | None = None,
                 decode_tokens: int = 32, decode_rounds: int = 3, batch: int = 4) -> dict:
    """Every figure of the module docstring; decode speed only when a prompt is given."""
    out = next_token_divergence(parent, child, heldout, batch)
    out.update({"params_parent": param_count(parent), "params_child": param_count(child),
                "kv_bytes_parent": kv_bytes_per_token(parent), "kv_bytes_child": kv_bytes_per_token(child)})
    if decode_prompt is not None:
        tps = decode_speed({"parent": parent, "child": child}, decode_prompt, decode_tokens, decode_rounds)
        out.update({"decode_tps_parent": tps["parent"], "decode_tps_child": tps["child"]})
    return out


def format_cost(cost: dict, title: str = "") -> str:
    """A few aligned lines for the terminal."""
    def ratio(a, b):
        return f"{cost[b] / cost[a]:.3f}x" if cost.get(a) else "-"

    lines = [title] if title else []
    lines.append(f"  KL(parent||child)  {cost['kl']:.4f} nats/token over {cost['heldout_tokens']} held-out tokens")
    lines.append(f"  perplexity         {cost['ppl_parent']:.3f} -> {cost['ppl_child']:.3f} "
                 f"({cost['ppl_ratio']:.3f}x)")
    lines.append(f"  parameters         {cost['params_parent']:,} -> {cost['params_child']:,} "
                 f"({ratio('params_parent', 'params_child')})")
    lines.append(f"  KV cache           {cost['kv_bytes_parent']:,} -> {cost['kv_bytes_child']:,} bytes/token "
                 f"({ratio('kv_bytes_parent', 'kv_bytes_child')})")
    if "decode_tps_child" in cost:
        lines.append(f"  decode             {cost['decode_tps_parent']:.1f} -> {cost['decode_tps_child']:.1f} "
                     f"tokens/s ({ratio('decode_tps_parent', 'decode_tps_child')}, alternating rounds)")
    return "\n".join(lines)
