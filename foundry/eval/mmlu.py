"""MMLU (Hendrycks et al. 2021): 57 subjects of four-way multiple choice, scored by log-likelihood.

The prompt is lm-evaluation-harness's: "The following are multiple choice questions (with answers) about
{subject}.\n\n", then k solved exemplars from the subject's dev split, then "{question}\nA. ..\nB. ..\nC. ..\nD. ..
\nAnswer:". The prediction is the choice whose continuation (" A".." D", or with option `score: choice_text`
the choice's own text) is most likely. A tie shares the credit (1/#tied if the gold is among them), so a scorer
that cannot tell the choices apart scores exactly chance. Reported: accuracy over all items (size-weighted),
the macro average over subjects, and each subject's accuracy. `--limit N` takes N questions round-robin over
the subjects (every subject represented), not the first N of the file.
"""
from __future__ import annotations

from collections import defaultdict

from foundry.eval.data import find_file, read_records, require_fields
from foundry.eval.runners import RUNNERS, EvalContext, fewshot_k, limited

LETTERS = ("A", "B", "C", "D")


def format_question(r: dict, with_answer: bool = False) -> str:
    text = r["question"].strip() + "\n" + "".join(f"{L}. {c}\n" for L, c in zip(LETTERS, r["choices"])) + "Answer:"
    return text + (" " + LETTERS[r["answer"]] if with_answer else "")


def build_prompt(r: dict, shots: list[dict]) -> str:
    subject = r["subject"].replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(format_question(s, True) + "\n\n" for s in shots) + format_question(r)


def continuations(r: dict, mode: str) -> list[str]:
    if mode == "letter":
        return [" " + L for L in LETTERS]
    if mode == "choice_text":
        return [" " + str(c) for c in r["choices"]]
    raise ValueError(f"MMLU option score={mode!r}; use 'letter' or 'choice_text'")


def credit(scores: list[float | None], gold: int) -> float:
    """1 if gold is the unique best; 1/m if it ties with m-1 others; 0 otherwise (or if unscorable)."""
    if any(s is None for s in scores):
        return 0.0
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(top) if gold in top else 0.0


def interleave_subjects(records: list[dict]) -> list[tuple[int, dict]]:
    """(index, record) in round-robin order over subjects (each subject in file order), so that `--limit N`
    covers every subject rather than the first one alphabetically."""
    by = defaultdict(list)
    for i, r in enumerate(records):
        by[r["subject"]].append((i, r))
    queues = [by[s] for s in sorted(by)]
    out, depth = [], 0
    while len(out) < len(records):
        out += [q[depth] for q in queues if depth < len(q)]
        depth += 1
    return out


def summarize(spec, rows: list[dict], subjects: list[str]) -> dict:
    per = defaultdict(list)
    for r, s in zip(rows, subjects):
        per[s].append(r["correct"])
    per_subject = {s: sum(v) / len(v) for s, v in sorted(per.items())}
    n = len(rows)
    return {"metric": spec.metric, "score": sum(r["correct"] for r in rows) / n if n else 0.0, "chance": spec.chance,
            "n": n, "macro": sum(per_subject.values()) / len(per_subject) if per_subject else 0.0,
            "per_subject": per_subject, "n_unencodable": sum(1 for r in rows if r.get("unencodable"))}


@RUNNERS.register("mmlu")
class MMLURunner:
    """options: score ('letter' = log p(" A".." D"); 'choice_text' = log p(" " + choice text)),
    normalize ('none' | 'chars': divide by the continuation's length in characters, lm-eval's acc_norm)."""

    @staticmethod
    def allowed_options(opts: dict) -> tuple:
        return ("score", "normalize")

    def run(self, spec, lm, ctx: EvalContext):
        opts = {**spec.options, **ctx.options}
        mode, norm = opts.get("score", "letter"), opts.get("normalize", "none")
        path = find_file(spec, spec.data, ctx.data_dir)
        records = read_records(path)
        require_fields(records, ("question", "subject", "choices", "answer"), path)
        k = fewshot_k(spec, ctx)
        dev = defaultdict(list)
        if k:
            dev_path = find_file(spec, spec.fewshot, ctx.data_dir, what="few-shot (dev)")
            for r in read_records(dev_path):
                dev[r["subject"]].append(r)
        items = limited(interleave_subjects(records), ctx)
        requests, spans = [], []
        for i, r in items:
            if k and len(dev[r["subject"]]) < k:
                raise ValueError(f"MMLU dev split has {len(dev[r['subject']])} exemplars for {r['subject']!r}, "
                                 f"fewer than num_fewshot={k}")
            prompt = build_prompt(r, dev[r["subject"]][:k])
            conts = continuations(r, mode)
            spans.append((len(requests), conts))
            requests += [(prompt, c) for c in conts]
        ctx.log(f"{spec.name}: scoring {len(requests)} continuations of {len(items)} questions ({k}-shot)")
        ll = lm.loglikelihood(requests, batch_size=ctx.batch_size)
        rows = []
        for (i, r), (s, conts) in zip(items, spans):
            res = ll[s:s + len(conts)]
            scores = [None if x is None else (x.logprob / len(c) if norm == "chars" else x.logprob)
                      for x, c in zip(res, conts)]
            rows.append({"id": f"{spec.name}/{r['subject']}/{i}", "subject": r["subject"], "gold": r["answer"],
                         "scores": scores, "correct": credit(scores, r["answer"]),
                         "unencodable": any(x is None for x in res)})
        out = summarize(spec, rows, [r["subject"] for r in rows])
        out["num_fewshot"] = k
        return out, rows
