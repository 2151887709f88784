"""The component registries (defined torch-free in foundry.registry), imported here so that variants and
plugins can write `from foundry.modules.registries import ATTENTION` without an import cycle."""
from foundry.registry import ATTENTION, LOSS, MLP, NORM, POSITION, REGISTRIES  # noqa: F401
