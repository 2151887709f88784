"""`python -m foundry.data COMMAND ...` (also `foundry data COMMAND ...`): data preparation commands.

    prepare        text / JSONL -> a prepared directory (train.bin, val.bin, meta.json, tokenizer.json)
    fit-tokenizer  fit a char or BPE tokenizer on text and save its tokenizer.json
    pack           pack JSONL examples into block_size rows (first-fit decreasing) and report the efficiency
    filter         dedupe (exact, near-duplicate) and length-filter a JSONL file, with a report
    chat           render conversations (JSONL of {"messages": [...]}) in ChatML, Llama 3 or Alpaca format
    synth          self-instruct: new instruction/response pairs from seed tasks and a trained run
"""
from __future__ import annotations

import argparse
import json
import sys

from foundry.safeio import DiskFullError


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text/JSONL into a prepared data set directory",
                       description="Tokenize text files, directories or JSONL into DIR (train.bin, val.bin, "
                                   "meta.json, tokenizer.json). Train on it with `data.path: DIR`.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text files, JSONL files (.jsonl, .jsonl.gz) or directories of them")
    p.add_argument("--tokenizer", required=True, metavar="SPEC",
                   help="'char', 'bpe:N' (byte-level BPE with N tokens, fitted on the input), or a tokenizer.json "
                        "(foundry's or a Hugging Face one; a directory holding one also works)")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to create (written atomically)")
    p.add_argument("--field", default="text", help="JSONL field with the text; 'a,b' joins fields with a newline "
                                                   "(default: text)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="the last fraction of the token stream, contiguous, validates (default 0.1)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: 'strict' (default) stops with the file and byte offset; 'replace' puts "
                        "U+FFFD for each invalid sequence and counts them in meta.json")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: every core)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")


def _add_fit(sub) -> None:
    p = sub.add_parser("fit-tokenizer", help="fit a tokenizer and save its tokenizer.json")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH")
    p.add_argument("--tokenizer", required=True, metavar="SPEC", help="'char' or 'bpe:N'")
    p.add_argument("--out", required=True, metavar="FILE", help="tokenizer.json to write")
    p.add_argument("--field", default="text")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict")


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="pack JSONL examples into block_size rows and report packing efficiency",
                       description="First-fit decreasing packing of variable-length examples into rows of "
                                   "block_size tokens, with document ids (for attention masks), position resets "
                                   "and loss masks; writes an .npz (see foundry/data/pack.py).")
    p.add_argument("--input", required=True, metavar="JSONL")
    p.add_argument("--field", default="text", help="field with the text; 'a,b' joins fields with a newline")
    p.add_argument("--tokenizer", required=True, metavar="SPEC",
                   help="a tokenizer.json, or 'char' / 'bpe:N' fitted on the input")
    p.add_argument("--block-size", type=int, required=True)
    p.add_argument("--long", choices=("split", "drop"), default="split",
                   help="examples longer than block_size: split into pieces (default) or drop them")
    p.add_argument("--eos", action="store_true", help="append the tokenizer's EOS token to each example")
    p.add_argument("--out", metavar="FILE.npz", help="where to write the packed rows (optional)")


def _add_filter(sub) -> None:
    p = sub.add_parser("filter", help="dedupe and length-filter a JSONL file, with a report of what was removed",
                       description="Exact dedupe (sha256 of normalised text), optional near-duplicate removal "
                                   "(MinHash), length filters in characters or tokens.")
    p.add_argument("--input", required=True, metavar="JSONL")
    p.add_argument("--out", required=True, metavar="JSONL")
    p.add_argument("--field", default="text", help="field(s) compared, 'a,b' joins them")
    p.add_argument("--min-chars", type=int, default=None)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--min-tokens", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--tokenizer", default=None, metavar="SPEC", help="tokenizer.json for the token limits")
    p.add_argument("--near-dup", type=float, default=None, metavar="JACCARD",
                   help="also drop near-duplicates whose estimated Jaccard similarity (word 5-gram MinHash) "
                        "is at least this, e.g. 0.8")
    p.add_argument("--report", default=None, metavar="JSON", help="write the report here (default: OUT.report.json)")


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="render conversations in ChatML / Llama 3 / Alpaca with assistant-only masks")
    p.add_argument("--input", required=True, metavar="JSONL", help='lines of {"messages": [{"role", "content"}]}')
    p.add_argument("--format", required=True, choices=("chatml", "llama3", "alpaca"))
    p.add_argument("--tokenizer", default=None, metavar="FILE",
                   help="tokenizer.json: also write token ids and the loss mask")
    p.add_argument("--out", required=True, metavar="JSONL",
                   help='lines of {"text"} (and {"ids", "loss_mask"} with --tokenizer)')


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="self-instruct: generate instruction/response pairs with a trained run")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a foundry run or checkpoint directory")
    p.add_argument("--seeds", required=True, metavar="JSONL",
                   help='seed tasks: lines of {"instruction", "output"} (optionally "input")')
    p.add_argument("--out", required=True, metavar="JSONL")
    p.add_argument("--n", type=int, default=20, help="instructions to keep (default 20)")
    p.add_argument("--max-attempts", type=int, default=None, help="generation rounds at most (default 5 x n)")
    p.add_argument("--examples", type=int, default=3, help="in-context examples per prompt (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--min-chars", type=int, default=3)
    p.add_argument("--max-chars", type=int, default=500)
    p.add_argument("--max-similarity", type=float, default=0.7,
                   help="drop an instruction whose ROUGE-L F1 with any existing one is above this (default 0.7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundry.data", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="`python -m foundry.data COMMAND --help` for each command's options.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_prepare, _add_fit, _add_pack, _add_filter, _add_chat, _add_synth):
        add(sub)
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 0
    try:
        return _run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, DiskFullError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "prepare":
        from foundry.data.prepare import prepare
        prepare(args.input, args.tokenizer, args.out, field=args.field, val_fraction=args.val_fraction,
                errors=args.errors, workers=args.workers, overwrite=args.overwrite)
    elif args.command == "fit-tokenizer":
        from foundry.config import write_text_atomic
        from foundry.data.prepare import find_sources, iter_documents, scan
        from foundry.data.tokenize import parse_tokenizer_spec, tokenizer_from_spec
        if parse_tokenizer_spec(args.tokenizer)[0] == "path":
            raise ValueError("fit-tokenizer: --tokenizer must be 'char' or 'bpe:N'")
        fields = args.field.split(",")
        sources = find_sources(args.input)
        scan(sources, fields, args.errors)  # every input checked before fitting
        tok = tokenizer_from_spec(args.tokenizer, (t for t, _ in iter_documents(sources, fields, args.errors)))
        write_text_atomic(args.out, tok.to_json())
        print(f"wrote {args.out}: {tok.kind} tokenizer, {tok.vocab_size:,} tokens")
    elif args.command == "pack":
        from foundry.data.pack import pack_jsonl_command
        pack_jsonl_command(args)
    elif args.command == "filter":
        from foundry.data.filter import filter_jsonl
        report = filter_jsonl(args.input, args.out, field=args.field, min_chars=args.min_chars,
                              max_chars=args.max_chars, min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                              tokenizer=args.tokenizer, near_dup=args.near_dup,
                              report_path=args.report or args.out + ".report.json")
        print(json.dumps(report["summary"], indent=2))
    elif args.command == "chat":
        from foundry.data.chat import render_jsonl
        n = render_jsonl(args.input, args.out, args.format, args.tokenizer)
        print(f"wrote {args.out}: {n} conversations in {args.format} format")
    elif args.command == "synth":
        from foundry.data.synthetic import synth_command
        synth_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
