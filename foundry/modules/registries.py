"""The registries themselves, in a module of their own so that variants and plugins can import them
without a cycle (`from foundry.modules.registries import ATTENTION`)."""
from foundry.registry import Registry

ATTENTION: Registry = Registry("attention")
POSITION: Registry = Registry("position")
NORM: Registry = Registry("norm")
MLP: Registry = Registry("mlp")
LOSS: Registry = Registry("loss")

REGISTRIES = {"attention": ATTENTION, "position": POSITION, "norm": NORM, "mlp": MLP, "loss": LOSS}
