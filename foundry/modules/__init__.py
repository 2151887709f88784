"""Component families, one file each; every variant is a small class registered by name.

Importing this package registers the built-in variants. `REGISTRIES[family]` maps a config string
(`model_args.attention: mla`) to its class; the model resolves each name once, at build time.
"""
from foundry.modules.registries import ATTENTION, LOSS, MLP, NORM, POSITION, REGISTRIES  # noqa: F401
from foundry.modules import attention, loss, mlp, norm, position  # noqa: F401  (registers built-ins)
from foundry.modules import variants  # noqa: F401  (scaffolded variants: python -m foundry.mutate new)

__all__ = ["ATTENTION", "POSITION", "NORM", "MLP", "LOSS", "REGISTRIES"]
