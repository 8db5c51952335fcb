"""Trained runs from Python: ``genflow.load_run(path)`` gives the model of a run directory (or
a checkpoint file), its resolved config and its data, with the evaluation genflow eval uses.

    import genflow
    run = genflow.load_run("outputs/realnvp-digits/2026-11-23_12-00-00")
    test = run.data("test")                     # uint8 images in [0, levels), as scored
    log_p = run.log_prob(test[:10])             # nats per image, dequantization counted
    run.evaluate("test")["bpd"]                 # what genflow eval reports
    images = run.sample(16, temperature=0.8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from genflow.data.datasets import DataSplits, load_dataset
from genflow.engine.evaluate import evaluate, seeded_rng
from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError
from genflow.models.base import GenerativeModel
from genflow.tasks.common import load_model_from_checkpoint
from genflow.validation import EVAL_SPLITS


@dataclass
class Run:
    """A trained run: ``model`` (eval mode, the EMA's weights where the run kept an average),
    ``config`` (the resolved config it trained with), ``checkpoint`` and ``step``."""

    path: Path
    checkpoint: Path
    model: GenerativeModel
    config: DictConfig
    step: int
    device: torch.device

    def _splits(self, split: str, root: str | Path | None) -> DataSplits:
        if split not in EVAL_SPLITS:
            raise GenflowError(
                f"split={split} is not a split; valid splits: {', '.join(EVAL_SPLITS)}"
            )
        dataset_cfg = self.config.dataset.copy()
        if root is not None:
            dataset_cfg.root = str(root)
        return load_dataset(dataset_cfg)

    def data(self, split: str = "test", root: str | Path | None = None) -> Tensor:
        """A split of the run's dataset as evaluation scores it, on the run's device;
        ``root`` if the data moved since training."""
        return self._splits(split, root).scored(split).to(self.device)

    def check(self, x: Tensor) -> Tensor:
        """``x`` as the model takes it, or one sentence saying why it cannot be scored."""
        shape = tuple(self.model.event_shape)
        if tuple(x.shape[1:]) != shape:
            raise GenflowError(
                f"x has examples of shape {tuple(x.shape[1:])}; this model scores {shape}"
            )
        levels = self.model.levels
        if levels is not None:
            if x.is_floating_point() and not bool((x == x.round()).all()):
                raise GenflowError(
                    f"x holds non-integer values; this model scores integers in [0, {levels}) "
                    "(raw images, not values scaled to [0, 1])"
                )
            if bool((x < 0).any()) or bool((x >= levels).any()):
                raise GenflowError(f"x holds values outside [0, {levels}), the model's levels")
        return x.to(self.device)

    def labels(self, split: str = "test", root: str | Path | None = None) -> Tensor | None:
        """A split's class labels on the run's device (None where the dataset has none)."""
        labels = self._splits(split, root).labels_of(split)
        return None if labels is None else labels.to(self.device)

    def contexts(self, split: str = "test", root: str | Path | None = None) -> Tensor | None:
        """A split's context vectors on the run's device (None where the dataset has none)."""
        context = self._splits(split, root).context
        return None if context is None else context[split].to(self.device)

    def _labels_for(self, n: int, y, context=None) -> Tensor | None:
        """The class labels ``y`` or the ``context`` as a conditional model takes them (None
        for an unconditional one), or one sentence saying why it cannot."""
        if y is not None and context is not None:
            raise GenflowError("pass either y (class labels) or context, not both")
        try:
            return self.model.condition(n, y if context is None else context, self.device)
        except ValueError as err:
            raise GenflowError(str(err)) from err

    @torch.no_grad()
    def log_prob(
        self, x: Tensor, seed: int | None = 0, y: Tensor | None = None, context=None
    ) -> Tensor:
        """log p(x) in nats per example, as the metrics count it (dequantization and every
        log-det included; VAEs: the importance-weighted bound with ``model.iw_samples``).
        ``seed`` fixes the noise as evaluation does (None: the global RNG). A
        class-conditional model gives log p(x | y) for class labels ``y``, a model of a
        context log p(x | c) for ``context`` (one vector, or one per example)."""
        x = self.check(x)
        y = self._labels_for(len(x), y, context)
        if seed is None:
            return self.model.conditional_log_prob(x, y)
        with seeded_rng(seed, self.device):
            return self.model.conditional_log_prob(x, y)

    def evaluate(self, split: str = "test", batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
        """The metrics genflow eval reports for ``split``: means over the split and the tail
        (of log p(x | y) with the split's labels or contexts for a conditional model)."""
        labels = self._splits(split, None).conditions(split, self.model.conditioned_on)
        labels = None if labels is None else labels.to(self.device)
        return evaluate(
            self.model, self.data(split), batch_size, seed=seed, tails=True, labels=labels
        )

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, seed: int | None = None, y=None, context=None
    ) -> Tensor:
        """``n`` samples in data units (integers in [0, levels) for discrete data); a
        class-conditional model draws class ``y`` (an int, or n labels), a model of a context
        draws from p(x | c) for ``context`` (one vector for all n, or n vectors)."""
        y = self._labels_for(n, y, context)
        extra = {} if y is None else {"y": y}
        if seed is None:
            return self.model.sample(n, temperature, **extra)
        with seeded_rng(seed, self.device):
            return self.model.sample(n, temperature, **extra)


def load_run(
    path: str | Path,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    iw_samples: int | None = None,
) -> Run:
    """The trained run at ``path`` (a run directory or a checkpoint file): ``checkpoint`` is
    best, last or a file name under checkpoints/; ``device`` cpu, cuda, cuda:1 or auto.
    ``iw_samples`` sets a VAE's importance samples (default: as in training)."""
    run_dir, ckpt_path = RunDir.locate(path, checkpoint)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenflowError(f"device={device} was asked for but no CUDA GPU is available")
    model, ckpt = load_model_from_checkpoint(ckpt_path, device)
    if iw_samples is not None:
        if model.iw_samples is None:
            raise GenflowError(f"{type(model).__name__} has no importance samples (a VAE has)")
        model.iw_samples = int(iw_samples)
    return Run(
        path=run_dir.path,
        checkpoint=ckpt_path,
        model=model,
        config=OmegaConf.create(ckpt["config"]),
        step=int(ckpt["trainer"]["step"]),
        device=device,
    )
