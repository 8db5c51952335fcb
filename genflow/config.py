"""Where the config tree lives, and the OmegaConf resolvers our configs use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """``genflow/conf`` inside an installed wheel, else the repository's top-level ``conf/``."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def register_resolvers() -> None:
    # ${pow:2,${.n_bits}}: the number of levels of n-bit data.
    if not OmegaConf.has_resolver("pow"):
        OmegaConf.register_new_resolver("pow", lambda base, exp: int(base) ** int(exp))


register_resolvers()
