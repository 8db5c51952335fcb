"""Checkpoints: plain containers written atomically, loadable with ``weights_only=True``."""

from __future__ import annotations

import logging
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import torch

from genflow.engine.files import replacing, unreadable
from genflow.errors import GenflowError, first_line

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "trainer", "config")


def previous_path(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any moment leaves the previous checkpoint or the new one complete, never a
    partial file under ``path``. With ``keep_previous`` the replaced file is kept as
    ``previous_path(path)``, so a checkpoint damaged later (a full disk, a bad copy) still
    has a good predecessor to fall back to.
    """
    path = Path(path)
    with replacing(path, sync=True) as tmp:  # a link at path is replaced, not written through
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except (OSError, RuntimeError) as err:  # a full disk: torch says "enforce fail at ..."
            raise GenflowError(
                f"could not write checkpoint {path} ({first_line(err)}); the disk may be full or "
                f"a quota or file-size limit reached. The earlier checkpoints are kept: free "
                f"space, then continue with resume={path.parent.parent}"
            ) from err
        if keep_previous and (path.exists() or path.is_symlink()):
            os.replace(path, previous_path(path))


def remove_stale_temporaries(folder: Path) -> None:
    """Partial files left by a process killed while writing a checkpoint."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or corrupted file is named."""
    path = Path(path)
    if not path.is_file():
        raise GenflowError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # a damaged pickle stream
            raise GenflowError(
                f"checkpoint {path} is truncated or corrupted and cannot be read ({err})"
            ) from err
        # a readable file that holds Python objects beyond tensors and plain containers:
        # genflow does not run code from a file to load it (torch's weights_only=True)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        holds = f" (it holds {found.group(1)})" if found else ""
        raise GenflowError(
            f"checkpoint {path} holds Python objects beyond tensors and plain values{holds}, "
            "so genflow will not load it: loading such a file can run arbitrary code. "
            "genflow's own checkpoints hold none; is this file from another tool?"
        ) from err
    except Exception as err:  # truncated or corrupted file: name it
        raise unreadable(path, err) or GenflowError(
            f"checkpoint {path} is truncated or corrupted and cannot be read ({first_line(err)})"
        ) from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise GenflowError(
            f"checkpoint {path} is not a genflow checkpoint (missing {', '.join(missing)})"
        )
    wrong = _malformed(state)
    if wrong:
        raise GenflowError(f"checkpoint {path} is damaged: {wrong}")
    return state


def _is_weights(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _malformed(state: dict[str, Any]) -> str | None:
    """What in a loaded checkpoint's structure is not what genflow writes, or None: the
    weights must be names and tensors, the stored config a model config, the rest mappings."""
    if not _is_weights(state["model"]):
        return "its 'model' entry is not a set of named tensors"
    if state.get("ema") is not None and not _is_weights(state["ema"]):
        return "its 'ema' entry is not a set of named tensors"
    if not isinstance(state["config"], dict):
        return "its 'config' entry is not a mapping"
    if not isinstance(state["trainer"], dict):
        return "its 'trainer' entry is not a mapping"
    return None


def stored_model_config(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The model config stored in a loaded checkpoint, or one sentence saying it has none."""
    model = state["config"].get("model")
    if not isinstance(model, dict) or not isinstance(model.get("_target_"), str):
        raise GenflowError(
            f"checkpoint {path} is damaged: its 'config' entry holds no model config with a _target_"
        )
    return model


def quarantine(path: Path) -> Path:
    """Move an unreadable checkpoint out of the way (``last.pt`` -> ``last.pt.unreadable-<time>``),
    so the next write of ``last.pt`` does not rotate it over the good ``last.prev.pt``. Kept,
    not deleted: it may be worth a look."""
    target = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def load_first_good(
    candidates: list[Path], map_location: str | torch.device = "cpu", quarantine_bad: bool = False
) -> tuple[dict[str, Any], Path]:
    """The first of ``candidates`` that loads; each bad one is logged by name and, with
    ``quarantine_bad`` (the process that writes checkpoints), moved aside once a later one
    loads."""
    errors, bad = [], []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except GenflowError as err:
            errors.append(str(err))
            bad.append(path)
            log.warning("%s; trying the checkpoint before it", err)
            continue
        for damaged in bad if quarantine_bad else []:
            if damaged.exists():
                log.warning("moved the unreadable %s to %s", damaged, quarantine(damaged))
        return state, path
    raise GenflowError("no readable checkpoint to resume from: " + "; ".join(errors))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
