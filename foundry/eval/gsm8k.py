"""GSM8K (Cobbe et al. 2021): grade-school maths word problems, greedy generation, exact match of the answer.

Two prompt styles, both as lm-evaluation-harness defines them: `gsm8k_cot` (8-shot chain of thought with the
exemplars of Wei et al. 2022, "Q: ... A: ... The answer is N.") and `gsm8k` (k-shot from the training split,
"Question: ... Answer: ... #### N"). Two extractions: strict (the number after `####`, else after "The answer is")
and flexible (the last number in the completion). Commas, `$` and a trailing `.` are stripped before comparison.
"""
from __future__ import annotations

import random
import re

from foundry.eval.data import find_file, read_records, require_fields
from foundry.eval.runners import RUNNERS, EvalContext, accuracy_summary, fewshot_k, limited

_NUM = r"(-?[$0-9.,]*[0-9])"
_STRICT = [re.compile(r"####\s*" + _NUM), re.compile(r"[Tt]he answer is\s*" + _NUM)]
_FLEX = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def normalize_number(s: str | None) -> str | None:
    """'$1,234.' -> '1234'; '5.00' -> '5'; None stays None."""
    if s is None:
        return None
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*", s):
        s = s.rstrip("0").rstrip(".")
    return s or None


def extract_strict(text: str) -> str | None:
    """The number after '####' (the GSM8K answer format), else after 'The answer is' (chain-of-thought)."""
    for pat in _STRICT:
        m = pat.search(text)
        if m:
            return normalize_number(m.group(1))
    return None


def extract_flexible(text: str) -> str | None:
    """The last number in the text."""
    found = [m.group(0) for m in _FLEX.finditer(text)]
    found = [f for f in found if re.search(r"\d", f)]
    return normalize_number(found[-1]) if found else None


def gold_answer(answer: str) -> str:
    """The reference number of a GSM8K answer ('... #### 1,234' -> '1234')."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer without '#### N': {answer[-80:]!r}")
    return normalize_number(answer.split("####")[-1])


@RUNNERS.register("gsm8k")
class GSM8KRunner:
    """options: fewshot_order ('first' = the pool in file order, as the CoT exemplars; 'random' = a seeded sample)."""

    @staticmethod
    def allowed_options(opts: dict) -> tuple:
        return ("fewshot_order",)

    def run(self, spec, lm, ctx: EvalContext):
        path = find_file(spec, spec.data, ctx.data_dir)
        records = read_records(path)
        require_fields(records, ("question", "answer"), path)
        k = fewshot_k(spec, ctx)
        shots = []
        if k:
            pool_path = find_file(spec, spec.fewshot, ctx.data_dir, what="few-shot")
            pool = read_records(pool_path)
            if len(pool) < k:
                raise ValueError(f"{pool_path}: {len(pool)} exemplars, fewer than num_fewshot={k}")
            order = spec.options.get("fewshot_order", "first")
            chosen = pool[:k] if order == "first" else random.Random(ctx.seed).sample(pool, k)
            shots = [spec.prompt.format(**ex) + spec.target.format(**ex) for ex in chosen]
        prefix = "".join(s + spec.fewshot_delimiter for s in shots)
        items = limited(list(enumerate(records)), ctx)
        prompts = [prefix + spec.prompt.format(**r) for _, r in items]
        ctx.log(f"{spec.name}: generating {len(prompts)} answers ({k}-shot)")
        outs = lm.generate_until(prompts, spec.stop, spec.max_new_tokens, batch_size=ctx.batch_size)
        rows = []
        for (i, r), out in zip(items, outs):
            gold = gold_answer(r["answer"])
            strict = extract_strict(out) if out is not None else None
            flex = extract_flexible(out) if out is not None else None
            rows.append({"id": f"{spec.name}/{i}", "gold": gold, "completion": out, "pred_strict": strict,
                         "pred_flexible": flex, "correct": strict == gold, "correct_flexible": flex == gold,
                         "unencodable": out is None})
        n = len(rows)
        return accuracy_summary(spec, rows, num_fewshot=k,
                                exact_match_flexible=sum(r["correct_flexible"] for r in rows) / max(n, 1)), rows
