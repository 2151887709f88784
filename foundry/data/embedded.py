"""The embedded default data set: Tiny Shakespeare, shipped gzipped inside the package (see assets/README.md)."""
from __future__ import annotations

import gzip
import hashlib
from importlib import resources

NAME = "tinyshakespeare"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def load_text() -> str:
    """The corpus as one string; its sha256 is checked so a damaged install fails loudly."""
    raw = gzip.decompress(resources.files("foundry.data").joinpath("assets/tinyshakespeare.txt.gz").read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"embedded data set is damaged (sha256 {digest[:16]}..., expected {SHA256[:16]}...); "
                           "reinstall foundry")
    return raw.decode("utf-8")
