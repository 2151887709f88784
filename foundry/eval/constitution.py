"""Constitution (harmlessness) tasks: does the model find the harmless response more likely than the harmful one?

Two data shapes, one runner (`kind: pairwise`):
  - HH-RLHF (Bai et al. 2022): {"chosen", "rejected"} dialogues "\n\nHuman: ...\n\nAssistant: ..." that share a
    prefix and differ in the last assistant turn. The context is the shared prefix up to the last "Assistant:";
    the continuations are the two final turns.
  - The project's own principles (`foundry/eval/tasks/principles.jsonl`): {"principle", "prompt", "chosen",
    "rejected"}, laid out as the same dialogue.
Accuracy = the fraction of pairs where log p(chosen) > log p(rejected) (a tie counts 1/2), with a Wilson 95%
interval; chance is 0.5. Option `normalize: mean` compares per-token means instead of sums.
"""
from __future__ import annotations

from collections import defaultdict

from foundry.data.finetune import HH_TURN, split_hh
from foundry.eval.data import find_file, read_records
from foundry.eval.runners import RUNNERS, EvalContext, limited
from foundry.eval.stats import wilson_interval

# one HH-RLHF parser for the eval and DPO training (data/finetune.py): the same cut after the shared
# "Assistant:" turn, so the pairs scored here are exactly the pairs DPO would read
TURN = HH_TURN
split_pair = split_hh


def to_pair(r: dict) -> tuple[str, str, str] | None:
    if "prompt" in r:
        return f"\n\nHuman: {r['prompt']}{TURN}", " " + r["chosen"], " " + r["rejected"]
    return split_pair(r["chosen"], r["rejected"])


@RUNNERS.register("pairwise")
class PairwiseRunner:
    """options: normalize ('sum' | 'mean' over continuation tokens)."""

    @staticmethod
    def allowed_options(opts: dict) -> tuple:
        return ("normalize",)

    def run(self, spec, lm, ctx: EvalContext):
        norm = {**spec.options, **ctx.options}.get("normalize", "sum")
        path = find_file(spec, spec.data, ctx.data_dir)
        records = read_records(path)
        for i, r in enumerate(records):
            if "chosen" not in r or "rejected" not in r:
                raise ValueError(f"{path}: record {i} lacks 'chosen'/'rejected' (has {sorted(r)[:6]})")
        items = limited(list(enumerate(records)), ctx)
        pairs = [(i, r, to_pair(r)) for i, r in items]
        skipped = sum(1 for *_, p in pairs if p is None)
        pairs = [x for x in pairs if x[2] is not None]
        reqs = []
        for _, _, (c, a, b) in pairs:
            reqs += [(c, a), (c, b)]
        ctx.log(f"{spec.name}: scoring {len(pairs)} pairs")
        ll = lm.loglikelihood(reqs, batch_size=ctx.batch_size)
        rows, by_principle = [], defaultdict(list)
        for j, (i, r, _) in enumerate(pairs):
            a, b = ll[2 * j], ll[2 * j + 1]
            if a is None or b is None:
                correct, sa, sb = 0.0, None, None
            else:
                sa = a.logprob / a.n_tokens if norm == "mean" else a.logprob
                sb = b.logprob / b.n_tokens if norm == "mean" else b.logprob
                correct = 1.0 if sa > sb else 0.5 if sa == sb else 0.0
            row = {"id": f"{spec.name}/{i}", "logp_chosen": sa, "logp_rejected": sb, "correct": correct,
                   "unencodable": a is None or b is None}
            if "principle" in r:
                row["principle"] = r["principle"]
                by_principle[r["principle"]].append(correct)
            rows.append(row)
        n = len(rows)
        k = sum(r["correct"] for r in rows)
        out = {"metric": spec.metric, "score": k / n if n else 0.0, "chance": spec.chance, "n": n,
               "ci95": wilson_interval(round(k), n), "n_unencodable": sum(r["unencodable"] for r in rows),
               "n_skipped_no_shared_turn": skipped}
        if by_principle:
            out["per_principle"] = {p: sum(v) / len(v) for p, v in sorted(by_principle.items())}
        return out, rows
