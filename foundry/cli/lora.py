"""`python -m foundry.cli.lora`: export a LoRA run's adapters.

    python -m foundry.cli.lora peft RUN OUT      # PEFT's format: OUT/adapter_model.safetensors + adapter_config.json
    python -m foundry.cli.lora merged RUN OUT    # the base with the adapters merged, as a Hugging Face directory

RUN is a run directory of a LoRA experiment (its checkpoints hold only the adapters; the base is its
init_from). `peft` records the base's directory as base_model_name_or_path, so
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), OUT)` gives the run's logits; a
base that is a foundry run (not a Hugging Face checkpoint) is exported first with `merged` or
`python -m foundry.zoo export`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _adapted(run_dir: str):
    """(config, the LoRA-wrapped model with the run's adapters, base) of a LoRA run directory."""
    import yaml

    from foundry.checkpoint import find_checkpoint
    from foundry.config import ConfigError, from_dict
    from foundry.trainer.objectives import OBJECTIVES

    run = Path(run_dir)
    ckpt = next((c for c in (find_checkpoint(run / "ckpt_best"), find_checkpoint(run / "ckpt_last"),
                             find_checkpoint(run)) if c), None)
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no checkpoint in it or in its ckpt_best/ or ckpt_last/")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    if cfg.lora.rank == 0:
        raise ConfigError(f"{run} is not a LoRA run (lora.rank 0); export it with python -m foundry.zoo export")
    obj = OBJECTIVES.get(cfg.training.objective)(cfg)
    model = obj.build_model(obj.prepare(cfg))
    obj.load_checkpoint(model, ckpt)
    return cfg, model.eval(), obj.base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.cli.lora", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("format", choices=("peft", "merged"))
    p.add_argument("run", help="a LoRA run directory")
    p.add_argument("out", help="output directory")
    args = p.parse_args(argv)
    from foundry.config import ConfigError

    try:
        cfg, model, base = _adapted(args.run)
        if args.format == "peft":
            from foundry.lora import save_peft

            if base.kind != "zoo":
                raise ConfigError(f"{args.run} finetunes the foundry run {cfg.init_from}, which PEFT cannot load as "
                                  f"a base; use `merged`, or export the base with python -m foundry.zoo export")
            save_peft(model, args.out, str(base.path))
        else:
            from foundry.lora import merged_state
            from foundry.model import GPT
            from foundry.zoo import save_hf

            plain = GPT(cfg.model_args)
            plain.load_state_dict(merged_state(model))
            save_hf(plain, args.out, tokenizer=base.tokenizer, chat_template=base.template, overwrite=True)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
