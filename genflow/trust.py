"""What genflow builds from a config: its own model classes, nothing else.

A model config names what gets called (``_target_`` at the model, ``model.posterior`` and
``model.prior``), and Hydra's ``instantiate`` calls whatever it is given with the stored
arguments. A run directory or a checkpoint received from elsewhere can name anything there
(``builtins.open``, ``os.system``), and a resume replays a run's stored overrides. So every
model config is checked here before anything is imported or called: each ``_target_`` must be
the dotted name of one of genflow's own classes, by its text first (only ``genflow.models``
modules are ever imported to check it), and then resolve to what genflow puts at that place
(a GenerativeModel at the top, a posterior builder under ``posterior``, a Prior under
``prior``). Hydra's other instantiate keys (``_args_``, ``_partial_``, ``_recursive_``,
``_convert_``) are not written by genflow and are refused.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from genflow.errors import GenflowError

# a dotted name under genflow.models, nothing else (no interpolation, no attribute chains)
_NAME = re.compile(r"genflow\.models(\.[A-Za-z][A-Za-z0-9_]*)+")
_INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
_PLACES = {(): "a genflow model", ("posterior",): "a posterior", ("prior",): "a prior"}


def _plain(node: Any) -> Any:
    """The config as plain containers, interpolations left as their text."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def _resolve(name: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attr, None)


def _fits(place: tuple[str, ...], obj: Any) -> bool:
    from genflow.models import posteriors
    from genflow.models.base import GenerativeModel
    from genflow.models.priors import Prior

    if place == ():
        return isinstance(obj, type) and issubclass(obj, GenerativeModel)
    if place == ("posterior",):
        return obj in posteriors.BUILDERS
    if place == ("prior",):
        return isinstance(obj, type) and issubclass(obj, Prior) and obj is not Prior
    return False


def check_model_config(model_cfg: Any, source: str) -> None:
    """Refuse, in one sentence naming ``source`` (a file, or "the command line") and the key,
    a model config that would build anything but genflow's own classes."""
    _walk(_plain(model_cfg), (), source)


def _walk(node: Any, place: tuple[str, ...], source: str) -> None:
    """``place``: the keys from the model config down to ``node``."""
    key = ("model", *place)
    if isinstance(node, Mapping):
        for name in node:
            if str(name) in _INSTANTIATE_KEYS[1:]:
                raise GenflowError(
                    f"{source}: {'.'.join(key)}.{name} is not a key genflow writes; genflow "
                    "builds its models from _target_ and plain values only, so it will not "
                    "build this config"
                )
        if "_target_" in node:
            _check_target(node["_target_"], place, source)
        for name, value in node.items():
            if name != "_target_":
                _walk(value, (*place, str(name)), source)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, value in enumerate(node):
            _walk(value, (*place, str(i)), source)


def _check_target(target: Any, place: tuple[str, ...], source: str) -> None:
    key = ("model", *place)
    where = ".".join((*key, "_target_"))
    expected = _PLACES.get(place)
    if expected is None:
        raise GenflowError(
            f"{source}: {where}={target} is refused: genflow builds nothing at {'.'.join(key)} "
            "(only the model, model.posterior and model.prior name a class)"
        )
    text = target if isinstance(target, str) else repr(target)
    if not (isinstance(target, str) and _NAME.fullmatch(target)) or not _fits(
        place, _resolve(target)
    ):
        raise GenflowError(
            f"{source}: {where}={text} is not {expected} of genflow's own; genflow builds "
            "only its own classes from a config, so it will not import or call this"
        )
