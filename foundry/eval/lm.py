"""The model side of evaluation: resolve a TARGET, then score or generate text in batches.

`LM` wraps a foundry GPT (anything with `forward(idx, positions=, mask=, caches=)` and `new_caches`) and a
tokenizer (`encode`, `decode`, `vocab_size`):
    loglikelihood([(context, continuation), ...]) -> [LogLik(logprob, n_tokens, greedy)]   right-padded batches
    generate_until([prompt, ...], stop, max_new_tokens) -> [text]      left-padded batches with the KV cache

Text the tokenizer cannot encode (a character outside a char-level alphabet) is never silently altered:
`encode` returns None and each task scores that item as wrong and counts it (`n_unencodable`).
Inputs longer than the model's context are cut from the left (as lm-evaluation-harness does) and counted;
generation takes at most half the context, so a small model's prompt keeps its question.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F


class TargetError(ValueError):
    """A TARGET that cannot be resolved to a model; the message lists what was tried."""


def resolve_target(target, device: str = "cpu"):
    """(model, tokenizer, label) from a run directory, a checkpoint directory, a zoo name, an object with
    `.model` and `.tokenizer` (e.g. `load_run`'s result) or a `(model, tokenizer)` pair."""
    if isinstance(target, tuple) and len(target) == 2:
        model, tok = target
        return model.to(device).eval(), tok, type(model).__name__
    if hasattr(target, "model") and hasattr(target, "tokenizer"):
        return target.model.to(device).eval(), target.tokenizer, str(getattr(target, "path", type(target).__name__))
    if not isinstance(target, (str, os.PathLike)):
        raise TargetError(f"TARGET must be a path, a zoo name, a loaded run or a (model, tokenizer) pair; "
                          f"got {type(target).__name__}")
    path = Path(target)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        from foundry.zoo import load_pretrained  # a Hugging Face checkpoint directory

        loaded = load_pretrained(path, device=device)
        return loaded.model.eval(), loaded.tokenizer, str(path)
    if path.exists():
        from foundry.checkpoint import load_run
        run = load_run(path, device=device)
        return run.model.eval(), run.tokenizer, str(path)
    try:  # zoo names (e.g. a pretrained model); the zoo arrives in its own issue
        from foundry.zoo import load_pretrained  # type: ignore[import-not-found]
    except ImportError:
        raise TargetError(f"TARGET {str(target)!r}: no such run or checkpoint directory, and no model zoo is "
                          f"available in this version to resolve it as a pretrained model name; pass the path "
                          f"of a run directory (out_dir) or a checkpoint directory") from None
    try:
        loaded = load_pretrained(str(target), device=device)
    except (KeyError, FileNotFoundError, ValueError) as e:
        raise TargetError(f"TARGET {str(target)!r}: not a run or checkpoint directory, and the zoo says: {e}") from None
    model, tok = (loaded.model, loaded.tokenizer) if hasattr(loaded, "model") else loaded
    return model.to(device).eval(), tok, str(target)


@dataclass
class LogLik:
    logprob: float      # sum of log p(continuation token | everything before)
    n_tokens: int       # continuation length in tokens
    greedy: bool        # every continuation token is the argmax


class LM:
    def __init__(self, model, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
        self.model, self.tok = model.eval(), tokenizer
        self.batch_size = batch_size
        cfg = getattr(model, "cfg", None)
        self.max_length = max_length or getattr(cfg, "block_size", None) or 2048
        self.device = next(model.parameters()).device
        self.n_truncated = 0

    # -- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int] | None:
        """Token ids, or None when the tokenizer cannot represent the text (e.g. a character outside a
        char-level alphabet)."""
        try:
            return list(self.tok.encode(text))
        except (ValueError, KeyError):
            return None

    def can_encode(self, *texts: str) -> bool:
        return all(self.encode(t) is not None for t in texts)

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]], batch_size: int | None = None) -> list[LogLik | None]:
        """Log-likelihood of each continuation after its context; None for a request that cannot be encoded.

        Requests whose model inputs are identical (e.g. one MMLU question with the continuations " A".." D" in a
        char-level model, where only the last token differs) share one row of the batch."""
        bs = batch_size or self.batch_size
        L = self.max_length
        rows: dict[tuple, int] = {}        # model input ids -> row index
        plan: list[list[tuple[int, list[int]]] | None] = []   # per request: [(row, target ids), ...]
        for ctx, cont in requests:
            c, k = self.encode(ctx), self.encode(cont)
            if c is None or k is None:
                plan.append(None)
                continue
            if not c or not k:
                raise ValueError(f"loglikelihood needs a non-empty context and continuation, got {ctx!r}, {cont!r}")
            full = c + k
            if len(full) - 1 > L:
                self.n_truncated += 1
            # A continuation longer than the context window is scored in windows (a rolling log-likelihood):
            # each window predicts at most L/2 tokens, so each has at least L/2 tokens of left context.
            step = len(k) if len(full) - 1 <= L else max(1, L // 2)
            chunks, a = [], len(c)
            while a < len(full):
                b = min(len(full), a + step)
                inp = tuple(full[max(0, b - 1 - L):b - 1])  # the window whose outputs end by predicting full[b-1]
                chunks.append((rows.setdefault(inp, len(rows)), full[a:b]))
                a = b
            plan.append(chunks)
        inputs = list(rows)
        # what each row is read for: (request, chunk, continuation ids) at its last len(ids) positions. Only
        # those scalars are kept, never a row's (T, V) log-probs: 1,000 HH-RLHF rows of ~300 tokens at a 49k
        # vocabulary would be ~60 GB
        needs: dict[int, list[tuple[int, int, list[int]]]] = {}
        for q, chunks in enumerate(plan):
            for j, (row, k) in enumerate(chunks or ()):
                needs.setdefault(row, []).append((q, j, k))
        scores: dict[tuple[int, int], tuple[float, bool]] = {}
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))  # similar lengths together
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            T = len(inputs[chunk[0]])
            idx = torch.zeros(len(chunk), T, dtype=torch.long)
            for b, r in enumerate(chunk):
                idx[b, :len(inputs[r])] = torch.tensor(inputs[r])
            logits = self.model(idx.to(self.device))                    # (B, T, V)
            for b, r in enumerate(chunk):
                n = len(inputs[r])
                span = max(len(k) for _, _, k in needs[r])
                lp = F.log_softmax(logits[b, n - span:n].float(), dim=-1).cpu()   # (span, V): the last positions
                for q, j, k in needs[r]:
                    tail, tgt = lp[span - len(k):], torch.tensor(k)
                    scores[(q, j)] = (float(tail.gather(1, tgt[:, None]).sum()), bool((tail.argmax(-1) == tgt).all()))
            del logits
        out: list[LogLik | None] = []
        for q, chunks in enumerate(plan):
            if chunks is None:
                out.append(None)
                continue
            parts = [scores[(q, j)] for j in range(len(chunks))]
            out.append(LogLik(sum(p[0] for p in parts), sum(len(k) for _, k in chunks), all(p[1] for p in parts)))
        return out

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int,
                       batch_size: int | None = None, temperature: float = 0.0,
                       generator: torch.Generator | None = None) -> list[str | None]:
        """Continue each prompt until a stop string appears (cut before it) or max_new_tokens; greedy at
        temperature 0. Left-padded batches decode together through the KV cache. None = unencodable prompt."""
        bs = batch_size or self.batch_size
        # a small context keeps at least half of itself for the prompt (its end: the question being asked)
        max_new_tokens = max(1, min(max_new_tokens, self.max_length // 2))
        keep = self.max_length - max_new_tokens
        enc = []
        for p in prompts:
            ids = self.encode(p)
            if ids is not None and len(ids) > keep:
                self.n_truncated += 1
                ids = ids[-keep:]
            enc.append(ids if ids else None)
        out: list[str | None] = [None] * len(prompts)
        todo = sorted((i for i in range(len(prompts)) if enc[i] is not None), key=lambda i: -len(enc[i]))
        for s in range(0, len(todo), bs):
            chunk = todo[s:s + bs]
            texts = self._decode_batch([enc[i] for i in chunk], list(stop), max_new_tokens, temperature, generator)
            for i, t in zip(chunk, texts):
                out[i] = t
        return out

    def _decode_batch(self, rows, stop, max_new_tokens, temperature, generator) -> list[str]:
        """One left-padded batch through GPT.generate (KV cache); a row ends when its decoded text holds a
        stop string (decoded whole: a multi-token stop string may span tokens)."""
        def hit(_row: int, new_ids: list[int]) -> bool:
            text = self.tok.decode(new_ids)
            return any(x in text for x in stop)

        new = self.model.generate(rows, max_new_tokens, temperature=temperature, generator=generator,
                                  should_stop=hit if stop else None)
        return [cut_at_stop(self.tok.decode(ids), stop) for ids in new]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the earliest stop string."""
    end = len(text)
    for x in stop:
        i = text.find(x)
        if i != -1:
            end = min(end, i)
    return text[:end]
