"""Finding the run to continue: ``resume=auto`` picks the newest run with the same config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

IGNORED_KEYS = ("resume",)


def stored_overrides(run_dir: Path) -> list[str]:
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


def _comparable(cfg) -> dict:
    data = OmegaConf.to_container(cfg, resolve=False)
    for key in IGNORED_KEYS:
        data.pop(key, None)
    return data


def find_matching_run(overrides: list[str], config_root: Path) -> Path | None:
    """Newest run directory under ``output_root`` whose stored config equals this one.

    Only runs with ``checkpoints/last.pt`` count. The config is composed here with the
    same overrides (minus ``resume``) and compared unresolved, so ``${now:...}`` and
    environment lookups do not make equal configs differ.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    plain = [o for o in overrides if not o.startswith(("resume=", "-"))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_root), version_base="1.3"):
        cfg = compose("train", overrides=plain)
    target = _comparable(cfg)
    root = Path(str(cfg.output_root))
    candidates = sorted(
        (p.parent.parent for p in root.glob("**/.hydra/config.yaml")),
        key=lambda d: (
            (d / "checkpoints" / "last.pt").stat().st_mtime
            if (d / "checkpoints" / "last.pt").exists()
            else 0.0
        ),
        reverse=True,
    )
    for run_dir in candidates:
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            continue
        if _comparable(OmegaConf.load(run_dir / ".hydra" / "config.yaml")) == target:
            return run_dir
    return None
