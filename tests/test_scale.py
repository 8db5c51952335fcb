"""Full-size data: image datasets select data_scale=full, whose overlays set the model and
trainer defaults; every model's default config trains on real MNIST as composed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MNIST_ROOT, compose_config

from genflow.config import config_dir
from genflow.data import EpochBatches, load_dataset
from genflow.engine.optim import build_optimizer
from genflow.preflight import config_groups
from genflow.tasks.common import build_model
from genflow.validation import validate_train_config

GROUPS = config_groups(config_dir())
OVERLAYS = sorted(p.stem for p in (config_dir() / "overlay").glob("*.yaml"))


def _compose(overrides: list[str]):
    return compose_config(overrides)


@pytest.mark.parametrize(
    ("dataset", "scale"),
    [
        ("digits", "small"),
        ("moons", "small"),
        ("mnist", "full"),
        ("fashion_mnist", "full"),
        ("binarized_mnist", "full"),
        ("cifar10", "full"),
        ("image_folder", "full"),
    ],
)
def test_the_dataset_picks_the_data_scale(dataset, scale):
    extra = ["dataset.path=somewhere"] if dataset == "image_folder" else []
    cfg = _compose([f"dataset={dataset}", *extra])
    assert cfg.data_scale.name == scale
    assert cfg.trainer.eval_every == (500 if scale == "full" else 100)


def test_overlays_adjust_defaults_and_yield_to_the_command_line_and_presets():
    small = _compose(["model=maf"])
    full = _compose(["model=maf", "dataset=mnist"])
    assert small.model.batch_norm and small.model.hidden_features == 512
    assert not full.model.batch_norm and full.model.hidden_features == 1024
    assert _compose(["model=maf", "dataset=mnist", "model.batch_norm=true"]).model.batch_norm
    assert _compose(["model=maf", "dataset=mnist", "data_scale=small"]).model.batch_norm
    assert _compose(["experiment=maf_mnist"]).model.batch_norm  # the paper's setup stands


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_composes_for_its_model(overlay):
    if overlay == "full":  # the part every full-size overlay starts from
        return
    model, scale = overlay.rsplit("_", 1)
    assert model in GROUPS["model"] and scale in GROUPS["data_scale"]
    dataset = "u1" if model == "energy_flow" else "mnist"  # it fits a 2-D target, not data
    cfg = _compose([f"model={model}", f"data_scale={scale}", f"dataset={dataset}"])
    validate_train_config(cfg)
    assert cfg.data_scale.name == scale


@pytest.fixture(scope="module")
def mnist():
    if not (MNIST_ROOT / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not present")
    cfg = _compose(["dataset=mnist", f"dataset.root={MNIST_ROOT}"])
    return load_dataset(cfg.dataset)


# every model of data (energy_flow fits a 2-D target energy, not data)
CONFIGS = [m for m in sorted(GROUPS["model"]) if m not in ("vae", "energy_flow")]
CONFIGS += [f"vae:{p}" for p in sorted(GROUPS["model/posterior"])]
CONFIGS += [f"vae:gaussian:{p}" for p in sorted(GROUPS["model/prior"]) if p != "standard"]


@pytest.mark.parametrize("choice", CONFIGS)
def test_every_default_model_trains_on_real_mnist(choice, mnist):
    """`genflow train model=X dataset=mnist` as composed, at its default size: a few
    optimizer steps with finite losses and gradients, then finite test bpd."""
    model_name, posterior, prior = (choice.split(":") + ["", ""])[:3]
    overrides = [f"model={model_name}", "dataset=mnist"]
    overrides += [f"model/posterior={posterior}"] if posterior else []
    overrides += [f"model/prior={prior}"] if prior else []
    cfg = _compose(overrides)
    validate_train_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.optimizer)
    batches = EpochBatches(mnist.train, 16, seed=0)
    model.initialize(batches(0))
    model.train()
    for step in range(2):
        model.set_training_step(step)
        loss = model(batches(step)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert math.isfinite(loss.item()), f"step {step}: loss {loss.item()}"
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
    model.eval()
    if hasattr(model, "iw_samples"):
        model.iw_samples = 4
    bpd = model.evaluate(mnist.test[:16])["bpd"]
    assert torch.isfinite(bpd).all() and (bpd > 0).all()
