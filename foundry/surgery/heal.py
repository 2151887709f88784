"""Healing a mutated model: a short training run of the child, started from its transferred weights, through
the one training loop (`foundry.train.train`, the trainer core). Nothing here trains; it writes the
experiment that does:

    budget = HealBudget.parse("tokens=32768,lora=0,distill=0.5")
    cfg = healing_experiment(child_cfg, child_dir, data_dir, budget, teacher="runs/parent", out_dir=...)
    summary = heal(cfg)             # foundry.train.train(cfg); the healed run is cfg.out_dir

The child starts from `init_from` (the surgery's checkpoint directory), trains on the calibration text's
training split for `tokens` tokens (full finetuning, or LoRA of rank `lora` on every attention and MLP
projection), optionally distilled from the parent (training.objective `distill`: (1 - a) CE + a KL to the
parent's next-token distribution, Hinton et al. 2015). The lineage records parent, surgery and budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from foundry.config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class HealBudget:
    """What healing may spend. tokens: training tokens (iterations = tokens / (batch x block), rounded up);
    lora: LoRA rank, 0 = full finetuning; lr: peak learning rate (default 1e-4 full, 1e-3 LoRA); distill:
    weight of the KL to the parent (0 = plain next-token loss); temperature of that KL; seed."""
    tokens: int
    lora: int = 0
    lr: float | None = None
    batch: int = 4
    block: int = 256
    distill: float = 0.0
    temperature: float = 1.0
    seed: int = 1337

    @classmethod
    def parse(cls, spec: str) -> "HealBudget":
        """`tokens=N[,lora=R][,lr=X][,batch=B][,block=T][,distill=A][,temperature=T][,seed=S]`."""
        kinds = {f.name: f.type for f in fields(cls)}
        out: dict = {}
        for part in (p for p in spec.split(",") if p.strip()):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in kinds:
                raise ConfigError(f"--heal {spec!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(kinds)} "
                                  f"(e.g. --heal tokens=32768,distill=0.5)")
            try:
                out[key] = float(value) if key in ("lr", "distill", "temperature") else int(float(value))
            except ValueError:
                raise ConfigError(f"--heal {spec!r}: {key}={value!r} is not a number") from None
        if "tokens" not in out:
            raise ConfigError(f"--heal {spec!r}: needs tokens=N, the healing budget in training tokens")
        b = cls(**out)
        for name, ok, why in (("tokens", b.tokens >= 1, ">= 1"), ("lora", b.lora >= 0, ">= 0 (0 = full)"),
                              ("batch", b.batch >= 1, ">= 1"), ("block", b.block >= 2, ">= 2"),
                              ("distill", 0 <= b.distill <= 1, "in [0, 1]"),
                              ("lr", b.lr is None or b.lr > 0, "> 0"), ("temperature", b.temperature > 0, "> 0")):
            if not ok:
                raise ConfigError(f"--heal {spec!r}: {name} must be {why}")
        return b

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora else 1e-4)


# every projection of attention (dense or latent) and of the MLP
LORA_TARGETS = ["attn.*", "mlp.fc", "mlp.proj"]


def healing_experiment(child: ExperimentConfig, child_dir: str | Path, data_dir: str | Path, budget: HealBudget,
                       *, teacher: str | None, out_dir: str | Path, parent: str | None = None) -> ExperimentConfig:
    """The experiment that heals `child` (saved at child_dir) on the prepared data set data_dir."""
    if budget.distill > 0 and not teacher:
        raise ConfigError("healing with distill > 0 needs the parent as teacher")
    # a finetune trains on windows of its base's block_size (the child is saved with block_size = budget.block
    # where positions allow, run.operate_and_measure); the iterations spend the token budget on those windows
    block = child.model_args.block_size
    it = math.ceil(budget.tokens / (budget.batch * block))
    lr = budget.learning_rate
    over = {
        "init_from": str(child_dir), "data.path": str(data_dir), "out_dir": str(out_dir),
        "training.max_iters": it, "training.batch_size": budget.batch, "training.gradient_accumulation_steps": 1,
        "training.learning_rate": lr, "training.min_lr": lr / 10, "training.warmup_iters": it // 10,  # < max_iters: a warmup must end before its schedule
        "training.lr_decay_iters": it, "training.lr_schedule": "cosine", "training.weight_decay": 0.0,
        "training.eval_interval": it, "training.eval_iters": 4, "training.log_interval": max(1, it // 10),
        "training.sample_tokens": 0, "training.seed": budget.seed,
        "lora.rank": budget.lora, "lora.targets": LORA_TARGETS,
        "training.objective": "distill" if budget.distill > 0 else "lm",
    }
    if budget.distill > 0:
        over.update({"training.distill.teacher": str(teacher), "training.distill.alpha": budget.distill,
                     "training.distill.temperature": budget.temperature})
    cfg = child.replace(over)
    lineage = dict(cfg.lineage)
    surgery = lineage.get("surgery", {})
    lineage["heal"] = {"parent": parent or surgery.get("parent"), "surgery": surgery.get("mutation"),
                       "budget": asdict(budget), "iters": it, "tokens": it * budget.batch * block}
    return cfg.replace({"lineage": lineage})


def load_healed(run_dir: str | Path, device="cpu"):
    """The healed model of a healing run, built as the trainer builds it (init_from's weights, LoRA wrapped
    when used, then the run's last checkpoint: all weights, or the adapters), adapters merged, float32, eval."""
    import yaml

    from foundry.checkpoint import find_checkpoint
    from foundry.config import from_dict
    from foundry.trainer.objectives import OBJECTIVES

    ckpt = find_checkpoint(Path(run_dir) / "ckpt_last") or find_checkpoint(Path(run_dir) / "ckpt_best")
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: the healing run left no checkpoint")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    objective = OBJECTIVES.get(cfg.training.objective)(cfg)
    cfg = objective.prepare(cfg)
    model = objective.build_model(cfg)
    objective.load_checkpoint(model, ckpt)
    if cfg.lora.rank > 0:
        from foundry.lora import merge

        merge(model)
    return model.float().to(device).eval()


def heal(cfg: ExperimentConfig, quiet: bool = True) -> dict:
    """Run the healing experiment through the one training loop; returns its summary."""
    from foundry.train import train

    return train(cfg, quiet=quiet)
