"""One tiny registry type, shared by every component family (torch-free).

`register(name)` decorates a class, `get(name)` returns it, `names()` lists them. A miss answers
"did you mean ..." and a duplicate registration fails, so a typo never silently picks a default.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def closest(word: str, candidates, n: int = 3) -> list[str]:
    """The candidates nearest to `word`, best first (difflib ratio, then prefix match)."""
    candidates = list(candidates)
    near = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not near:
        near = [c for c in candidates if c.startswith(word[:2])][:n]
    return near


def suggest(word: str, candidates) -> str:
    near = closest(word, candidates)
    return f"; did you mean {near[0]!r}?" if near else ""


class Registry(Generic[T]):
    """A named family of interchangeable implementations (e.g. every attention variant)."""

    def __init__(self, family: str):
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.family} variant {name!r} is registered twice "
                                 f"({self._items[name]!r} and {obj!r}); pick another name")
            self._items[name] = obj
            try:
                setattr(obj, "registered_name", name)
            except (AttributeError, TypeError):
                pass
            return obj
        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.family} {name!r}{suggest(name, self._items)} "
                           f"(known: {', '.join(sorted(self._items))})") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


# The component families. The instances live here, torch-free, so the config can see names registered by
# plugins without importing the modules; foundry.modules fills them with the built-in variants.
ATTENTION: Registry = Registry("attention")
POSITION: Registry = Registry("position")
NORM: Registry = Registry("norm")
MLP: Registry = Registry("mlp")
LOSS: Registry = Registry("loss")
REGISTRIES = {"attention": ATTENTION, "position": POSITION, "norm": NORM, "mlp": MLP, "loss": LOSS}
