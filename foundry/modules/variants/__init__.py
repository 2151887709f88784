"""Variants scaffolded by `python -m foundry.mutate new <family> <name>` live here, one file each.

Every module in this folder is imported with the package, so a new file registers its variant and the
registry-generated contract tests cover it at once.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
