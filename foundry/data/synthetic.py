"""Synthetic self-instruct (Wang et al. 2023, "Self-Instruct"): new instruction/response pairs from seed tasks
and an existing model, filtered, written as JSONL.

Each round, for a batch of prompts:
  1. instruction: a few tasks (seeds and tasks kept so far, drawn at random) listed as "### Instruction:\\n..."
     blocks, and an open "### Instruction:\\n" for the model to continue; the text up to the first blank line,
     "###" or EOS is the new instruction.
  2. response: the same examples as instruction/response pairs, then the new instruction and "### Response:\\n";
     the text up to the first "###" (or EOS) is the response.
  3. filters, the first that fires names the reason in the report: empty, too_short / too_long (characters, on
     the instruction and the response), duplicate (same normalised text as a seed or a kept task),
     too_similar (ROUGE-L F1 with any seed or kept instruction above max_similarity; the paper uses 0.7).
The model is any foundry GPT with its tokenizer (a trained run via foundry.checkpoint.load_run, or a zoo model
converted to foundry). Prompts longer than the model's block_size keep their last tokens.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from foundry.data.filter import normalise


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts over lower-cased words (longest common subsequence; Lin 2004)."""
    x, y = normalise(a).split(), normalise(b).split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def _cut(text: str, stops: tuple[str, ...]) -> str:
    for s in stops:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text.strip()


def read_seeds(path) -> list[dict]:
    """Seed tasks: JSONL lines of {"instruction", "output"} (optionally "input"); errors name file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--seeds {path}: no such file")
    seeds = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) \
                or not isinstance(rec.get("output"), str):
            raise ValueError(f"{path}:{lineno}: a seed task needs string fields 'instruction' and 'output'")
        seeds.append({"instruction": rec["instruction"], "input": rec.get("input", "") or "", "output": rec["output"]})
    if not seeds:
        raise ValueError(f"{path}: no seed tasks")
    return seeds


def _task_text(t: dict, with_output: bool) -> str:
    s = f"### Instruction:\n{t['instruction']}\n\n"
    if t.get("input"):
        s += f"### Input:\n{t['input']}\n\n"
    if with_output:
        s += f"### Response:\n{t['output']}\n\n"
    return s


def self_instruct(model, tokenizer, seeds: list[dict], n: int, *, examples: int = 3, max_new_tokens: int = 64,
                  temperature: float = 0.9, top_k: int | None = 50, min_chars: int = 3, max_chars: int = 500,
                  max_similarity: float = 0.7, max_attempts: int | None = None, batch: int = 8,
                  seed: int = 0) -> tuple[list[dict], dict]:
    """Generate up to `n` new tasks; returns (tasks, report). Stops after `max_attempts` candidates (5 n)."""
    if n < 1:
        raise ValueError("self_instruct: n must be >= 1")
    if not seeds:
        raise ValueError("self_instruct: give at least one seed task")
    block = model.cfg.block_size  # the context it was trained on
    max_new = min(max_new_tokens, block // 2)
    budget = block - max_new
    for t in seeds:  # an alphabet too small for the seeds fails here, before generating
        tokenizer.encode(_task_text(t, True))
    eos = getattr(tokenizer, "token_id", lambda r: None)("eos")
    stops = [eos] if eos is not None else None
    rng = random.Random(seed)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    kept: list[dict] = []
    seen = {normalise(t["instruction"]) for t in seeds}
    pool_instr = [t["instruction"] for t in seeds]
    removed: dict[str, int] = {}
    samples: list[dict] = []
    attempts, max_attempts = 0, max_attempts or 5 * n

    def drop(reason, cand):
        removed[reason] = removed.get(reason, 0) + 1
        if len(samples) < 20:
            samples.append({"reason": reason, **cand})

    def fit(text: str) -> list[int]:
        ids = tokenizer.encode(text)
        return ids[-budget:]

    while len(kept) < n and attempts < max_attempts:
        k = min(batch, max_attempts - attempts)
        attempts += k
        shots = [rng.sample(seeds + kept, min(examples, len(seeds) + len(kept))) for _ in range(k)]
        prompts = [fit("".join(_task_text(t, False) for t in s) + "### Instruction:\n") for s in shots]
        outs = model.generate(prompts, max_new, temperature=temperature, top_k=top_k, stop_tokens=stops,
                              generator=gen)
        instrs = [_cut(tokenizer.decode([i for i in o if i != eos]), ("\n\n", "###")) for o in outs]
        prompts = [fit("".join(_task_text(t, True) for t in s) + f"### Instruction:\n{ins}\n\n### Response:\n")
                   for s, ins in zip(shots, instrs)]
        outs = model.generate(prompts, max_new, temperature=temperature, top_k=top_k, stop_tokens=stops,
                              generator=gen)
        resps = [_cut(tokenizer.decode([i for i in o if i != eos]), ("###",)) for o in outs]
        for ins, resp in zip(instrs, resps):
            cand = {"instruction": ins, "input": "", "output": resp}
            if len(kept) >= n:
                break
            if not ins or not resp:
                drop("empty", cand)
            elif len(ins) < min_chars or len(resp) < min_chars:
                drop("too_short", cand)
            elif len(ins) > max_chars or len(resp) > max_chars:
                drop("too_long", cand)
            elif normalise(ins) in seen:
                drop("duplicate", cand)
            elif max((rouge_l(ins, p) for p in pool_instr), default=0.0) > max_similarity:
                drop("too_similar", cand)
            else:
                kept.append(cand)
                seen.add(normalise(ins))
                pool_instr.append(ins)
    report = {"kept": len(kept), "attempts": attempts, "removed_by_reason": removed, "removed_samples": samples,
              "settings": {"examples": examples, "max_new_tokens": max_new, "temperature": temperature,
                           "top_k": top_k, "min_chars": min_chars, "max_chars": max_chars,
                           "max_similarity": max_similarity, "seed": seed}}
    return kept, report


def synth_command(args) -> dict:
    """`python -m foundry.data synth`: load a run, generate, write JSONL and OUT.report.json atomically."""
    from foundry.checkpoint import load_run
    from foundry.config import write_text_atomic

    seeds = read_seeds(args.seeds)  # bad seeds fail before the model is loaded
    run = load_run(args.model, device=args.device)
    tasks, report = self_instruct(run.model, run.tokenizer, seeds, args.n, examples=args.examples,
                                  max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, min_chars=args.min_chars, max_chars=args.max_chars,
                                  max_similarity=args.max_similarity, max_attempts=args.max_attempts,
                                  seed=args.seed)
    report["model"] = str(args.model)
    write_text_atomic(args.out, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    write_text_atomic(args.out + ".report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(tasks)} tasks kept of {report['attempts']} generated "
          f"(removed: {report['removed_by_reason']})")
    return report
