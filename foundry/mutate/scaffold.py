"""Scaffold a new component variant: `python -m foundry.mutate new <family> <name>`.

    path = scaffold("attention", "my_attn")   # writes foundry/modules/variants/attention_my_attn.py

The file holds one class registered as `<name>` in its family, with the family's signature and a docstring to
fill in. It starts as a working copy of the family's reference variant (it subclasses it and every hook calls
the parent), so it trains and passes the registry-generated contract tests (tests/test_contracts.py) before the
first edit; `model_args.<family>: <name>` (or `training.loss: <name>`) selects it. Every file in
foundry/modules/variants/ is imported with the package, and the config sees its name without importing torch.

This module imports no torch (foundry.mutate stays instant).
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path

from foundry import catalog
from foundry.config import write_text_atomic
from foundry.registry import suggest

NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# What each family's scaffold subclasses, and the methods it spells out (the family's interface).
_HEADER = '''"""{family} variant `{name}`, scaffolded by `python -m foundry.mutate new {family} {name}`.

Select it with `{key}: {name}`. It starts as an exact copy of the reference `{ref}`
({base}): edit the methods below. The contract tests (tests/test_contracts.py) and the training test (tests/test_variants_train.py) cover
it as soon as this file exists; run them with `python -m pytest tests/test_contracts.py -k {name}`.
Options for it go in `model_args.extra` (free-form), read as `cfg.extra.get("...", default)`.
"""
from __future__ import annotations

import torch
'''

_BODIES = {
    "attention": ("mha", "CausalSelfAttention", "foundry.modules.attention", "ATTENTION", "model_args.attention", '''
from foundry.config import ModelConfig
from foundry.modules.attention import CausalSelfAttention
from foundry.modules.registries import ATTENTION


@ATTENTION.register("{name}")
class {cls}(CausalSelfAttention):
    """{title}: a copy of `{ref}` to edit; replace this line by what it changes and its source (paper, year)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        # new parameters: nn.Linear layers, so LoRA can wrap them by name

    def allowed(self, q_slots: torch.Tensor, k_slots: torch.Tensor) -> torch.Tensor | None:
        """(Tq, Tk) bool: the keys each query may see on top of causality (slots are absolute token
        indices); None keeps dense causal attention on SDPA's flash path."""
        return super().allowed(q_slots, k_slots)

    def forward(self, x: torch.Tensor, pos, positions: torch.Tensor, cache=None, mask=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). pos: the Position module; positions (T,) or (B, T); cache from
        new_cache() or None; mask (B, 1, T, Tk) bool or None."""
        return super().forward(x, pos, positions, cache, mask)

    def new_cache(self, batch: int, max_len: int, device, dtype):
        """The KV cache this layer decodes with (must offer length, update() and nbytes_per_token();
        one that keeps only some slots also offers key_slots(device), as modules.attention.RollingKVCache)."""
        return super().new_cache(batch, max_len, device, dtype)
'''),
    "position": ("rope", "Rope", "foundry.modules.position", "POSITION", "model_args.position", '''
from foundry.config import ModelConfig
from foundry.modules.position import Rope
from foundry.modules.registries import POSITION


@POSITION.register("{name}")
class {cls}(Rope):
    """{title}: a copy of `{ref}` to edit; replace this line by what it changes and its source (paper, year)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Absolute encoding added to the token embeddings: x (B, T, C), positions (T,) or (B, T)."""
        return super().embed(x, positions)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        """Rotary encoding of q (B, nh, T, hs) and k (B, nkv, T, hs)."""
        return super().rotate(q, k, positions)

    def bias(self, q_slots: torch.Tensor, k_slots: torch.Tensor) -> torch.Tensor | None:
        """Additive score bias (nh, Tq, Tk) from slot indices (their differences are distances), or None."""
        return super().bias(q_slots, k_slots)
'''),
    "norm": ("rmsnorm", "RMSNorm", "foundry.modules.norm", "NORM", "model_args.norm", '''
from foundry.modules.norm import RMSNorm
from foundry.modules.registries import NORM


@NORM.register("{name}")
class {cls}(RMSNorm):
    """{title}: a copy of `{ref}` to edit; replace this line by what it changes and its source (paper, year)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__(dim, eps, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return super().forward(x)
'''),
    "mlp": ("gelu", "GeluMLP", "foundry.modules.mlp", "MLP", "model_args.mlp", '''
from foundry.config import ModelConfig
from foundry.modules.mlp import GeluMLP
from foundry.modules.registries import MLP


@MLP.register("{name}")
class {cls}(GeluMLP):
    """{title}: a copy of `{ref}` to edit; replace this line by what it changes and its source (paper, year)."""

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__(cfg, hidden)  # fc: Linear(C, H), proj: Linear(H, C); H = cfg.mlp_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). A block that adds a training loss stores it in self.aux_loss."""
        return super().forward(x)
'''),
    "loss": ("ce", "CrossEntropy", "foundry.modules.loss", "LOSS", "training.loss", '''
from foundry.config import TrainingConfig
from foundry.modules.loss import CrossEntropy
from foundry.modules.registries import LOSS


@LOSS.register("{name}")
class {cls}(CrossEntropy):
    """{title}: a copy of `{ref}` to edit; replace this line by what it changes and its source (paper, year)."""

    def __init__(self, cfg: TrainingConfig | None = None):
        super().__init__(cfg)

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token loss (N,) from logits (N, V) and targets (N,); must be 0 where targets == -1."""
        return super().token_loss(logits, targets)
'''),
}
FAMILIES = tuple(_BODIES)


def package_root() -> Path:
    """The directory that holds the `foundry` package (a checkout's root, for an editable install)."""
    return Path(__file__).resolve().parents[2]


def scaffold(family: str, name: str, root: Path | None = None) -> Path:
    """Write foundry/modules/variants/<family>_<name>.py under `root` (default: this package's root) holding a
    registered, working `<name>` variant of `family`; return its path. Refuses unknown families, names that
    are not lower-case identifiers, names already taken, and existing files."""
    if family not in _BODIES:
        raise ValueError(f"unknown component family {family!r}{suggest(family, FAMILIES)} "
                         f"(families: {', '.join(FAMILIES)})")
    if not NAME.match(name) or keyword.iskeyword(name):
        raise ValueError(f"variant name {name!r} must be a lower-case Python identifier "
                         f"(letters, digits, underscores; starting with a letter), e.g. 'my_{family}'")
    folder = Path(root if root is not None else package_root()) / "foundry" / "modules" / "variants"
    taken = set(catalog.names(family)) | set(catalog.scaffolded(family, root=folder.parents[2]))
    if name in taken:
        raise ValueError(f"{family} {name!r} already exists; pick another name "
                         f"(taken: {', '.join(sorted(taken))})")
    path = folder / f"{family}_{name}.py"
    if path.exists():
        raise FileExistsError(f"{path} already exists; pick another name or delete that file")
    if not (folder / "__init__.py").is_file():
        raise FileNotFoundError(f"{folder} is not the variants package of a foundry checkout "
                                f"(no __init__.py there); pass the checkout's root")
    ref, base, module, _, key, body = _BODIES[family]
    cls = "".join(part.capitalize() for part in name.split("_") if part) or name
    title = cls
    text = _HEADER.format(family=family, name=name, key=key, ref=ref, base=f"{module}.{base}") + \
        body.format(name=name, cls=cls, title=title, ref=ref)
    write_text_atomic(path, text)
    return path

