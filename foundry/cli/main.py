"""`foundry COMMAND ...`: one entry point for every module command (each also runs as `python -m ...`)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("foundry.train", "train a GPT from an experiment YAML"),
    "data": ("foundry.data.__main__", "prepare data sets, fit tokenizers, pack and filter"),
    "mutate": ("foundry.mutate.__main__", "write a mutated experiment from the baseline"),
    "eval": ("foundry.eval.__main__", "evaluate a run on capability tasks and probes"),
    "sweep": ("foundry.cli.sweep", "the autonomous loop: train mutants, evaluate, promote"),
    "compare": ("foundry.cli.compare", "compare runs side by side"),
    "lr_finder": ("foundry.cli.lr_finder", "learning-rate range test"),
    "generate": ("foundry.generate", "continue a prompt with a run or a zoo checkpoint, streamed"),
    "chat": ("foundry.chat", "talk to a run or a zoo checkpoint (its chat template, its stop ids)"),
    "zoo": ("foundry.zoo.__main__", "pretrained checkpoints: list, info, export to Hugging Face"),
    "surgery": ("foundry.surgery.__main__", "mutate a trained model keeping its weights: cost, then healing"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: foundry COMMAND [ARGS...]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n`foundry COMMAND --help` for each command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from foundry.registry import suggest
        print(f"foundry: unknown command {name!r}{suggest(name, COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"foundry {name}"] + rest
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
