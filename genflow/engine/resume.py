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


def find_matching_run(cfg) -> Path | None:
    """Newest run directory under ``cfg.output_root`` whose stored config equals ``cfg``.

    Only runs with a checkpoint count. ``cfg`` is the composed (unresolved) train config of
    the new command line; the stored ``.hydra/config.yaml`` is compared unresolved too, so
    ``${now:...}`` and environment lookups do not make equal configs differ.
    """
    target = _comparable(cfg)
    root = Path(str(cfg.output_root))

    def newest_checkpoint(run_dir: Path) -> float:
        times = [p.stat().st_mtime for p in (run_dir / "checkpoints").glob("last*.pt")]
        return max(times, default=0.0)

    candidates = sorted(
        (p.parent.parent for p in root.glob("**/.hydra/config.yaml")),
        key=newest_checkpoint,
        reverse=True,
    )
    for run_dir in candidates:
        if newest_checkpoint(run_dir) == 0.0:
            continue
        if _comparable(OmegaConf.load(run_dir / ".hydra" / "config.yaml")) == target:
            return run_dir
    return None
