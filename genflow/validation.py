"""Checks of a composed config before any work: one sentence per bad value, naming the key."""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from genflow.data.datasets import check_digits_split, check_n_bits
from genflow.engine.distributed import ACCELERATORS
from genflow.engine.trainer_config import MONITOR_MODES, TrainerConfig
from genflow.errors import GenflowError, first_cause

LOGGER_MODES = ("offline", "online", "disabled")
BAD_STEP_ACTIONS = ("rollback", "stop")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(cfg: DictConfig, key: str, ok: Callable[[object], bool], allowed: str) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if not ok(value):
        shown = repr(value)
        if len(shown) > 60:  # a runaway value would bury the sentence
            shown = f"{shown[:40]}... ({len(str(value))} characters)"
        raise GenflowError(f"{key}={shown} is not valid; {key} must be {allowed}")


WANDB_NAME_LIMIT = 128


# the datasets read from a folder the user names, and what it holds
FOLDER_DATASETS = {
    "image_folder": "with one sub-folder of images per class",
    "image_stream": "of images (one sub-folder per class, or none) or of .tar shards",
}


def validate_train_config(cfg: DictConfig) -> None:
    """Reject bad values with a message naming the key and what is allowed."""
    positive_int = (lambda v: _integer(v) and v >= 1, "a positive integer")
    checks: list[tuple[str, Callable, str]] = [
        ("seed", _integer, "an integer"),
        ("optimizer.lr", lambda v: _number(v) and v > 0, "a positive number"),
        ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
        (
            "optimizer.betas",
            lambda v: v is not None and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        ),
        ("optimizer.scheduler.warmup_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
        (
            "optimizer.scheduler.min_lr_ratio",
            lambda v: v is None or (_number(v) and 0 <= v <= 1),
            "a number in [0, 1] (the floor of the cosine decay, as a share of optimizer.lr)",
        ),
        ("trainer.max_steps", *positive_int),
        (
            "trainer.max_minutes",
            lambda v: v is None or (_number(v) and v > 0),
            "a positive number of minutes or null",
        ),
        ("trainer.batch_size", *positive_int),
        ("trainer.accumulate_steps", *positive_int),
        ("trainer.eval_batch_size", *positive_int),
        ("trainer.log_every", *positive_int),
        ("trainer.eval_every", *positive_int),
        ("trainer.ckpt_every", *positive_int),
        (
            "trainer.sample_every",
            lambda v: _integer(v) and v >= 0,
            "an integer >= 0 (0: no sample grids)",
        ),
        ("trainer.sample_n", *positive_int),
        (
            "trainer.grad_clip",
            lambda v: v is None or (_number(v) and v > 0),
            "a positive number or null",
        ),
        (
            "trainer.grad_skip",
            lambda v: v is None or (_number(v) and v > 0),
            "a positive number or null",
        ),
        (
            "trainer.patience",
            lambda v: v is None or (_integer(v) and v >= 1),
            "a positive integer or null",
        ),
        (
            "trainer.monitor.mode",
            lambda v: v in MONITOR_MODES,
            f"one of {', '.join(MONITOR_MODES)}",
        ),
        ("trainer.max_bad_steps", *positive_int),
        ("trainer.compile", lambda v: isinstance(v, bool), "true or false"),
        ("trainer.channels_last", lambda v: isinstance(v, bool), "true or false"),
        ("trainer.deterministic", lambda v: isinstance(v, bool), "true or false"),
        (
            "trainer.precision",
            lambda v: v in ("fp32", "bf16", "fp16"),
            "one of fp32, bf16, fp16",
        ),
        (
            "trainer.ema",
            lambda v: v is None or (_number(v) and 0 < v < 1),
            "null or a decay in (0, 1), e.g. 0.999",
        ),
        ("eval.iw_samples", *positive_int),
        (
            "trainer.on_bad_steps",
            lambda v: v in BAD_STEP_ACTIONS,
            f"one of {', '.join(BAD_STEP_ACTIONS)}",
        ),
        ("trainer.rollback_lr_factor", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
        ("trainer.max_rollbacks", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ]
    extra = sorted(set(cfg.trainer) - TrainerConfig.keys())
    if extra:  # an added (+trainer.<key>) key the trainer would silently ignore
        raise GenflowError(
            f"unknown config key 'trainer.{extra[0]}'; keys under trainer: "
            f"{', '.join(sorted(TrainerConfig.keys()))}"
        )
    for key, ok, allowed in checks:
        _check(cfg, key, ok, allowed)
    _check_output_root(cfg)
    holds = FOLDER_DATASETS.get(cfg.dataset.name)
    if holds is not None and OmegaConf.is_missing(cfg.dataset, "path"):
        raise GenflowError(
            f"dataset={cfg.dataset.name} needs dataset.path=<folder>: a folder {holds} "
            "(relative to dataset.root, or absolute)"
        )
    if cfg.dataset.get("num_workers") is not None:
        _check(cfg, "dataset.num_workers", lambda v: _integer(v) and v >= 0, "an integer >= 0")
    if cfg.logger.name == "wandb":
        _check(cfg, "logger.mode", lambda v: v in LOGGER_MODES, f"one of {', '.join(LOGGER_MODES)}")
        for key in ("logger.run_name", "logger.group", "logger.project"):
            _check(
                cfg,
                key,
                lambda v: v is None or len(str(v)) <= WANDB_NAME_LIMIT,
                f"null or at most {WANDB_NAME_LIMIT} characters (what W&B shows and stores)",
            )
    if cfg.device.type == "ddp":
        _check(cfg, "device.nproc_per_node", *positive_int)
        _check(
            cfg,
            "device.accelerator",
            lambda v: v in ACCELERATORS,
            f"one of {', '.join(ACCELERATORS)}",
        )
        _check(cfg, "device.backend", lambda v: v in (None, "gloo", "nccl"), "null, gloo or nccl")
        _check(cfg, "device.timeout_min", lambda v: _number(v) and v > 0, "a positive number")
    if "n_bits" in cfg.dataset and cfg.dataset.n_bits is not None:
        _check(
            cfg, "dataset.n_bits", lambda v: _integer(v) and 1 <= v <= 8, "an integer from 1 to 8"
        )
        check_n_bits(cfg.dataset)
    _check_sizes(cfg)
    _check_model_choices(cfg)
    _check_model_fits_data(cfg)


EVAL_SPLITS = ("train", "val", "test")
VAE_PARTS = ("posterior", "prior")  # the nested groups model/posterior and model/prior
SAMPLE_MODES = ("grid", "interpolate")


# integer sizes in model (and model.posterior, model.prior) configs: at least 1, or at least 0
POSITIVE_SIZES = (
    "conv_channels",
    "couplings_per_scale",
    "dequantizer_hidden",
    "first_kernel_size",
    "hidden_channels",
    "hidden_features",
    "iw_chunk_elements",
    "kernel_size",
    "latent_features",
    "layers_per_block",
    "num_blocks",
    "num_components",
    "num_flows",
    "num_householder",
    "num_layers",
    "num_levels",
    "num_mixtures",
    "num_resnet",
    "num_resolutions",
    "num_scales",
    "residual_channels",
    "skip_channels",
    "steps_per_level",
)
NONNEGATIVE_SIZES = ("hidden_layers", "final_couplings", "kl_warmup_steps", "dequantizer_couplings")
DATASET_COUNTS = ("n_train", "n_val", "n_test", "val_size")


def _check_sizes(cfg: DictConfig) -> None:
    """Layer, channel and example counts: a zero or negative one builds a degenerate model
    (or fails deep inside torch) instead of saying what is wrong."""
    sections = [("model", cfg.model)]
    for part in VAE_PARTS:
        if isinstance(cfg.model.get(part), DictConfig):
            sections.append((f"model.{part}", cfg.model[part]))
    for prefix, section in sections:
        for key in section:
            if key in POSITIVE_SIZES:
                _check(
                    cfg, f"{prefix}.{key}", lambda v: _integer(v) and v >= 1, "a positive integer"
                )
            elif key in NONNEGATIVE_SIZES:
                _check(cfg, f"{prefix}.{key}", lambda v: _integer(v) and v >= 0, "an integer >= 0")
    for key in DATASET_COUNTS:
        if key in cfg.dataset:
            _check(cfg, f"dataset.{key}", lambda v: _integer(v) and v >= 1, "a positive integer")
    if cfg.dataset.name == "digits":
        check_digits_split(cfg.dataset)


def validate_eval_config(cfg: DictConfig) -> None:
    """The values genflow eval reads from its own config (the model's come from the run)."""
    _check(cfg, "eval.iw_samples", lambda v: _integer(v) and v >= 1, "a positive integer")
    _check(
        cfg,
        "eval.probes",
        lambda v: v is None or (_integer(v) and v >= 1),
        "null or a positive integer",
    )
    _check(cfg, "batch_size", lambda v: _integer(v) and v >= 1, "a positive integer")
    _check(cfg, "split", lambda v: v in EVAL_SPLITS, f"one of {', '.join(EVAL_SPLITS)}")
    _check_checkpoint(cfg)
    _check_out(cfg)


def _check_out(cfg: DictConfig) -> None:
    _check(
        cfg,
        "out",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "null (the run directory) or a folder",
    )


def validate_sample_config(cfg: DictConfig) -> None:
    """The values genflow sample reads from its own config."""
    positive = (lambda v: _integer(v) and v >= 1, "a positive integer")
    _check(cfg, "sample.mode", lambda v: v in SAMPLE_MODES, f"one of {', '.join(SAMPLE_MODES)}")
    for key in ("sample.n", "sample.batch_size", "sample.pairs"):
        _check(cfg, key, *positive)
    _check(cfg, "sample.steps", lambda v: _integer(v) and v >= 2, "an integer >= 2")
    _check(cfg, "sample.seed", _integer, "an integer")
    _check(cfg, "sample.temperature", lambda v: _number(v) and v > 0, "a positive number")
    _check(
        cfg,
        "sample.label",
        lambda v: v is None or (_integer(v) and v >= 0),
        "null or a class index (an integer >= 0)",
    )
    _check(
        cfg,
        "sample.context",
        lambda v: (
            v is None
            or (isinstance(v, str) and v != "")
            or (OmegaConf.is_list(v) and len(v) > 0 and all(_number(c) for c in v))
        ),
        "null, a split (train, val, test), a list of numbers or a .npy or .csv file",
    )
    _check_checkpoint(cfg)
    _check_out(cfg)


NAME_MAX = 255  # bytes in one file name on the common file systems


def _check_output_root(cfg: DictConfig) -> None:
    """``output_root`` must be a place where run directories can be made: no name in it too
    long, and its nearest existing ancestor a directory this process can create one in
    (probed with a temporary directory, removed at once)."""
    import os
    import tempfile
    from pathlib import Path

    value = OmegaConf.select(cfg, "output_root", default=None)
    if value is None:
        return
    path = Path(str(value)).expanduser().absolute()
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise GenflowError(
                f"output_root: the name '{part[:30]}...' is {len(os.fsencode(part))} bytes "
                f"long; file systems take names of at most {NAME_MAX}"
            )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GenflowError(
            f"output_root={value}: {existing} is a file, not a directory, so no run directory "
            "can be made under it; choose another output_root"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".genflow-probe-", dir=existing))
    except OSError as err:
        raise GenflowError(
            f"output_root={value}: cannot create directories under {existing} "
            f"({err.strerror}); choose a writable output_root"
        ) from err


def _model_choices() -> dict[str, tuple[str, ...]]:
    from genflow.bijections.autoregressive import AFFINE_SCALES
    from genflow.distributions.dequantization import DEQUANTIZATIONS
    from genflow.models.maf import PERMUTATIONS
    from genflow.models.pixelrnn import PIXELRNN_VARIANTS
    from genflow.models.realnvp import CHECKERBOARDS

    return {
        "dequantization": DEQUANTIZATIONS,
        "checkerboard": CHECKERBOARDS,
        "scale": (*AFFINE_SCALES, "auto"),  # MAF's: auto picks by the data
        "permutation": PERMUTATIONS,
        "variant": PIXELRNN_VARIANTS,
    }


def _check_model_choices(cfg: DictConfig) -> None:
    """String options of the model configs, before a run directory exists."""
    for key, valid in _model_choices().items():
        if key in cfg.model:
            _check(
                cfg, f"model.{key}", lambda v, valid=valid: v in valid, f"one of {', '.join(valid)}"
            )


def _check_checkpoint(cfg: DictConfig) -> None:
    _check(
        cfg,
        "checkpoint",
        lambda v: isinstance(v, str) and v != "" and "/" not in v,
        "best, last or a file name under checkpoints/",
    )


def _check_model_fits_data(cfg: DictConfig) -> None:
    data_shape = list(cfg.dataset.shape)
    model_shape = OmegaConf.select(cfg, "model.event_shape", default=None)
    if model_shape is not None and list(model_shape) != data_shape:
        raise GenflowError(
            f"model.event_shape={list(model_shape)} does not match dataset.shape={data_shape} "
            f"of dataset '{cfg.dataset.name}'; leave model.event_shape at ${{dataset.shape}}"
        )
    model_levels = OmegaConf.select(cfg, "model.levels", default=None)
    if "levels" in cfg.model and model_levels != cfg.dataset.levels:
        raise GenflowError(
            f"model.levels={model_levels} does not match dataset.levels={cfg.dataset.levels}; "
            "leave model.levels at ${dataset.levels}"
        )
    from genflow.trust import check_model_config

    check_model_config(cfg.model, "the model config")  # before anything is imported or built
    target = str(cfg.model.get("_target_", ""))
    model_class = _model_class(target)
    _check_context(cfg, model_class, target)
    if model_class.discrete_only and cfg.dataset.levels is None:
        name = target.rsplit(".", 1)[-1]
        raise GenflowError(
            f"model {name} models discrete values but dataset '{cfg.dataset.name}' is continuous "
            "(dataset.levels is null); use a flow (model=nsf, realnvp, maf, nice, cnf) for vectors and tables"
        )
    for part in VAE_PARTS:
        node = OmegaConf.select(cfg, f"model.{part}", default=None)
        if node is None:
            continue
        if not model_class.takes_posterior:
            name = target.rsplit(".", 1)[-1]
            raise GenflowError(
                f"model/{part} is a part of model=vae; model {name} has no {part} "
                f"(drop the model/{part} override or add model=vae)"
            )
        from hydra.utils import instantiate

        try:  # small: build it now, so a bad setting fails before any run directory exists
            instantiate(node)
        except Exception as err:
            raise GenflowError(f"model/{part}: {first_cause(err)}") from err
    try:
        model_class.check_config(cfg.model)
    except ValueError as err:
        raise GenflowError(str(err)) from err
    monitored = OmegaConf.select(cfg, "trainer.monitor.metric", default=None)
    if monitored is not None and monitored not in model_class.eval_metrics:
        raise GenflowError(
            f"trainer.monitor.metric={monitored} is not a validation metric of "
            f"{target.rsplit('.', 1)[-1]}; valid: {', '.join(model_class.eval_metrics)}"
        )
    if model_class.image_only and len(data_shape) != 3:
        name = target.rsplit(".", 1)[-1]
        raise GenflowError(
            f"model {name} needs image data (C, H, W) but dataset '{cfg.dataset.name}' has "
            f"shape {data_shape}; for vectors use model=nsf, realnvp, maf, nice or cnf"
        )


def _check_context(cfg: DictConfig, model_class, target: str) -> None:
    """A dataset that carries a context needs a model that takes one, of its width."""
    name = target.rsplit(".", 1)[-1]
    data_context = OmegaConf.select(cfg, "dataset.context_features", default=None)
    if data_context and not model_class.takes_context:
        raise GenflowError(
            f"dataset '{cfg.dataset.name}' carries a context of {data_context} values per "
            f"example, but model {name} cannot be conditioned on one (the flows can: nsf, "
            "maf, realnvp, nice, glow, cnf); leave dataset.context_columns empty"
        )
    if "context_features" in cfg.model:
        model_context = OmegaConf.select(cfg, "model.context_features", default=None)
        if model_context != data_context:
            raise GenflowError(
                f"model.context_features={model_context} does not match the dataset's "
                f"context of {data_context} values; leave model.context_features at "
                "${oc.select:dataset.context_features,null}"
            )


def _model_class(target: str):
    from hydra.utils import get_class

    from genflow.models.base import GenerativeModel

    try:
        cls = get_class(target)
    except Exception as err:
        raise GenflowError(f"model._target_={target} cannot be imported ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
        raise GenflowError(
            f"model._target_={target} is not a genflow model (a GenerativeModel subclass)"
        )
    return cls
