"""Data pipeline throughput and packing efficiency on the reference texts in ../shared/data.

    python bench/bench_data.py [--shared ../shared/data] [--vocab 8192] [--repeats 3]

Measures, per text (Tiny Shakespeare, Pride and Prejudice, GSM8K train question+answer, MMLU test questions
and choices, HumanEval prompts and solutions, HH-RLHF harmless test dialogues):
    fit      BPETokenizer(vocab_size=V).fit(text) in MB/s of UTF-8 input (tokenizers' trainer, all threads)
    encode   encode_batch over the text's documents, MB/s, with tokenizers' threads on and off, side by side
    prepare  `prepare` end to end (scan, fit, encode, split, write) with 1 and 2 worker processes, MB/s
and the packing efficiency of GSM8K train (question + "\\n" + answer + EOS, tokens of a BPE fitted on it)
under first-fit decreasing for several block sizes. Timings are medians of --repeats runs; the machine is
shared, so compare the ratios measured in one run rather than absolute figures across runs.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_texts(shared: Path) -> dict[str, list[str]]:
    """Documents of each reference text, as prepare would see them (paragraphs or records)."""
    def jsonl(p, fn):
        op = gzip.open if p.name.endswith(".gz") else open
        with op(p, "rt", encoding="utf-8") as f:
            return [fn(json.loads(x)) for x in f if x.strip()]

    def paras(p):
        t = p.read_text(encoding="utf-8")
        return [x + "\n\n" for x in t.split("\n\n")]

    return {
        "tinyshakespeare": paras(shared / "tinyshakespeare/input.txt"),
        "pride_and_prejudice": paras(shared / "gutenberg/pride_and_prejudice_pg1342.txt"),
        "gsm8k_train": jsonl(shared / "gsm8k/train.jsonl", lambda r: r["question"] + "\n" + r["answer"]),
        "mmlu_test": jsonl(shared / "mmlu/mmlu_test.jsonl", lambda r: r["question"] + "\n" + "\n".join(r["choices"])),
        "humaneval": jsonl(shared / "humaneval/HumanEval.jsonl.gz", lambda r: r["prompt"] + r["canonical_solution"]),
        "hh_rlhf_harmless_test": jsonl(shared / "hh-rlhf/harmless-base_test.jsonl.gz", lambda r: r["chosen"]),
    }


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    shared = Path(args.shared)
    if not shared.is_dir():
        print(f"reference data not found at {shared}; pass --shared", file=sys.stderr)
        return 2
    from foundry.data.pack import pack
    from foundry.data.prepare import prepare
    from foundry.data.tokenize import BPETokenizer

    texts = load_texts(shared)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "vocab": args.vocab, "texts": {}, "packing": {}}
    print(f"# bench_data {results['date']}, {os.cpu_count()} CPUs, BPE vocab {args.vocab}, "
          f"median of {args.repeats}\n")
    print("| text | MB | fit MB/s | encode MB/s (threads) | encode MB/s (1 thread) | prepare MB/s 1 worker "
          "| prepare MB/s 2 workers |")
    print("|---|---|---|---|---|---|---|")
    for name, docs in texts.items():
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_s = timed(lambda: BPETokenizer(vocab_size=args.vocab).fit(docs), args.repeats)
            tok = BPETokenizer(vocab_size=args.vocab).fit(docs)
        assert tok.decode(tok.encode(docs[0])) == docs[0]
        enc_par = timed(lambda: tok.encode_batch(docs), args.repeats)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers on each parallel call
        enc_one = timed(lambda: tok.encode_batch(docs), args.repeats)
        del os.environ["TOKENIZERS_PARALLELISM"]
        prep = {}
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.jsonl"
            src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
            tok.save(Path(tmp) / "tok.json")
            for w in (1, 2):
                k = iter(range(1000))
                prep[w] = timed(lambda: prepare([src], str(Path(tmp) / "tok.json"), Path(tmp) / f"o{w}-{next(k)}",
                                                workers=w, log=lambda *a: None), args.repeats)
        row = {"mb": round(mb, 2), "fit_mb_s": mb / fit_s, "encode_mb_s_threads": mb / enc_par,
               "encode_mb_s_1thread": mb / enc_one, "prepare_mb_s_1worker": mb / prep[1],
               "prepare_mb_s_2workers": mb / prep[2], "vocab_learned": tok.vocab_size}
        results["texts"][name] = row
        print(f"| {name} | {mb:.2f} | {row['fit_mb_s']:.2f} | {row['encode_mb_s_threads']:.2f} | "
              f"{row['encode_mb_s_1thread']:.2f} | {row['prepare_mb_s_1worker']:.2f} | "
              f"{row['prepare_mb_s_2workers']:.2f} |", flush=True)

    docs = texts["gsm8k_train"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = BPETokenizer(vocab_size=args.vocab).fit(docs)
    eos = tok.token_id("eos")
    examples = [ids + [eos] for ids in tok.encode_batch(docs)]
    lens = sorted(len(e) for e in examples)
    print(f"\nGSM8K train: {len(examples)} examples (question + answer + EOS), BPE {tok.vocab_size} tokens, "
          f"length mean {statistics.mean(lens):.1f}, median {lens[len(lens) // 2]}, max {lens[-1]}\n")
    print("| block_size | rows | efficiency | split (longer than block) | FFD seconds |")
    print("|---|---|---|---|---|")
    for T in (256, 512, 1024, 2048):
        t = time.perf_counter()
        p = pack(examples, T)
        dt = time.perf_counter() - t
        results["packing"][T] = {**p.report(), "seconds": dt}
        print(f"| {T} | {p.tokens.shape[0]} | {p.efficiency:.4f} | {p.split} | {dt:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
