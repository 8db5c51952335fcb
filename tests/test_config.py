"""Every config group option composes; models build from every dataset they can model."""

from __future__ import annotations

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from genflow.config import config_dir
from genflow.data.tabular import complete_table_config
from genflow.errors import GenflowError
from genflow.preflight import config_groups as _groups
from genflow.tasks.common import build_model
from genflow.validation import validate_train_config

GROUPS = _groups(config_dir())
OPTIONS = [(group, option) for group, options in GROUPS.items() for option in options]


def _compose(name: str, overrides: list[str]):
    return compose_config(overrides, name)


def test_expected_groups_exist():
    for group in (
        "model",
        "dataset",
        "optimizer",
        "optimizer/scheduler",
        "device",
        "logger",
        "trainer",
        "model/posterior",
    ):
        assert group in GROUPS, group
    assert {"gaussian", "planar", "radial", "iaf", "nsf", "sylvester", "householder"} == set(
        GROUPS["model/posterior"]
    )
    assert {"adam", "adamw", "adamax"} <= set(GROUPS["optimizer"])
    assert {"constant", "cosine"} <= set(GROUPS["optimizer/scheduler"])
    assert {"auto", "cpu", "cuda"} <= set(GROUPS["device"])
    assert {"wandb", "none"} <= set(GROUPS["logger"])
    datasets = {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "image_folder",
        "moons",
        "circles",
        "eight_gaussians",
        "checkerboard",
        "pinwheel",
        "two_spirals",
    }
    assert datasets <= set(GROUPS["dataset"])


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group in ("model/posterior", "model/prior"):  # parts of the VAE
        overrides.insert(0, "model=vae")
    if option == "image_folder":
        overrides.append("dataset.path=somewhere")
    cfg = _compose("train", overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["model"]["event_shape"] == resolved["dataset"]["shape"]


SMALL = {
    "realnvp": ["model.hidden_channels=4", "model.hidden_features=8"],
    "nice": ["model.hidden_features=8", "model.hidden_layers=1"],
    "maf": ["model.hidden_features=8", "model.num_layers=2"],
    "nsf": ["model.hidden_features=8", "model.hidden_channels=4", "model.steps_per_level=1"],
    "glow": ["model.hidden_channels=4", "model.steps_per_level=1"],
    "pixelcnn": ["model.hidden_channels=4", "model.num_layers=1"],
    "wavenet": ["model.residual_channels=4", "model.skip_channels=4", "model.layers_per_block=1"],
    "pixelcnnpp": ["model.hidden_channels=4", "model.num_resnet=1"],
    "pixelrnn": ["model.hidden_channels=4", "model.num_layers=1"],
    "gated_pixelcnn": ["model.hidden_channels=6", "model.num_layers=1"],
    "vae": ["model.hidden_features=8", "model.latent_features=2"],
    "hvae": ["model.hidden_features=8", "model.latent_features=2"],
    "vqvae": ["model.hidden_channels=4", "model.num_codes=4", "model.prior_layers=1"],
    "energy_flow": ["model.num_flows=2"],
    "cnf": ["model.hidden_features=8", "model.num_layers=1"],
}
ENERGY_TARGETS = {"u1", "u2", "u3", "u4"}  # what model=energy_flow fits
IMAGE_ONLY = {"glow", "pixelcnn", "pixelcnnpp", "pixelrnn", "gated_pixelcnn", "vqvae"}
# what takes a context vector: the flows, and the ARMs (at their class sites)
CONTEXT_FLOWS = {"nsf", "maf", "realnvp", "nice", "glow", "cnf"} | {
    "pixelcnn",
    "pixelcnnpp",
    "wavenet",
    "pixelrnn",
    "gated_pixelcnn",
}
DISCRETE_ONLY = {"pixelcnn", "pixelcnnpp", "wavenet", "pixelrnn", "gated_pixelcnn", "vqvae"}


# one dataset of each kind (its shape, levels, context and config keys): the others of a kind
# (fashion_mnist; the other toys and energies; wine; sbi_gaussian_linear; the other UCI
# benchmarks) compose in test_every_group_option_composes and build as their kind does
KINDS = [
    "digits",
    "mnist",
    "binarized_mnist",
    "cifar10",
    "image_folder",
    "image_stream",
    "moons",
    "u1",
    "tabular",
    "breast_cancer",
    "sbi_two_moons",
    "power",
]


def test_the_dataset_kinds_are_datasets():
    assert set(KINDS) <= set(GROUPS["dataset"])


@pytest.mark.parametrize("model", sorted(GROUPS["model"]))
@pytest.mark.parametrize("dataset", KINDS)
def test_every_model_builds_for_every_dataset_it_can_model(model, dataset, tmp_path):
    overrides = [f"model={model}", f"dataset={dataset}", *SMALL[model]]
    if dataset in ("image_folder", "image_stream"):
        overrides.append("dataset.path=somewhere")
    if dataset == "tabular":
        (tmp_path / "t.csv").write_text(
            "a,b,c\n" + "".join(f"{i},{i * i},{-i}\n" for i in range(9))
        )
        overrides.append(f"dataset.path={tmp_path / 't.csv'}")
    cfg = _compose("train", overrides)
    complete_table_config(cfg.dataset)  # a table's shape comes from its header, as in preflight
    if cfg.dataset.get("context_features") and model not in CONTEXT_FLOWS:
        with pytest.raises(GenflowError, match="cannot be conditioned on one"):
            validate_train_config(cfg)
        return
    if model == "energy_flow" and dataset not in ENERGY_TARGETS:
        with pytest.raises(GenflowError, match="energy_flow fits one of the target densities"):
            validate_train_config(cfg)
        return
    if model in DISCRETE_ONLY and cfg.dataset.levels is None:
        with pytest.raises(GenflowError, match="discrete"):
            validate_train_config(cfg)
        return
    if model in IMAGE_ONLY and len(cfg.dataset.shape) != 3:
        with pytest.raises(GenflowError, match="image"):
            validate_train_config(cfg)
        with pytest.raises(GenflowError, match="images"):
            build_model(cfg.model)
        return
    validate_train_config(cfg)
    built = build_model(cfg.model)
    assert built.event_shape == tuple(cfg.dataset.shape)
    assert built.levels == cfg.dataset.levels


def test_default_experiment_is_realnvp_on_digits():
    cfg = _compose("train", [])
    assert cfg.model._target_.endswith("RealNVP") and cfg.dataset.name == "digits"
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"


def test_n_bits_sets_levels():
    cfg = _compose("train", ["dataset=mnist", "dataset.n_bits=5"])
    assert cfg.dataset.levels == 32 and cfg.model.levels == 32


@pytest.mark.parametrize("name", ["eval", "sample"])
def test_eval_and_sample_configs_compose(name):
    cfg = _compose(name, ["run=somewhere"])
    assert cfg.run == "somewhere" and cfg.checkpoint == "best"


def test_split_flags_keeps_hydra_flag_values_out_of_overrides():
    from genflow.preflight import split_flags

    overrides, flags = split_flags(
        ["-m", "a=1", "--cfg", "job", "b=2", "--info", "defaults", "--help"]
    )
    assert overrides == ["a=1", "b=2"]
    assert flags == ["-m", "--cfg", "job", "--info", "defaults", "--help"]


@pytest.mark.parametrize("value", ["0", "-2", "soon"])
def test_max_minutes_must_be_a_positive_number(value):
    cfg = _compose("train", [f"trainer.max_minutes={value}"])
    with pytest.raises(GenflowError, match="trainer.max_minutes must be a positive number"):
        validate_train_config(cfg)
    validate_train_config(_compose("train", ["trainer.max_minutes=0.5"]))


def test_maf_config_defaults_to_sigmoid_and_old_checkpoints_keep_softclamp():
    """New runs get scale=auto from conf/model/maf.yaml: the sigmoid scale on discrete data,
    softclamp on continuous data; a config stored before the option existed (no scale key)
    rebuilds the soft-clamped model it was trained with."""
    cfg = _compose("train", ["model=maf", *SMALL["maf"]])
    assert cfg.model.scale == "auto"
    assert {layer.scale for layer in _affine_layers(build_model(cfg.model))} == {"sigmoid"}
    vectors = _compose("train", ["model=maf", "dataset=sbi_two_moons", *SMALL["maf"]])
    assert {layer.scale for layer in _affine_layers(build_model(vectors.model))} == {"softclamp"}
    old = OmegaConf.to_container(cfg.model, resolve=True)
    del old["scale"]
    assert {layer.scale for layer in _affine_layers(build_model(old))} == {"softclamp"}


@pytest.mark.parametrize("model_name", ["realnvp", "nice", "maf", "glow"])
def test_flow_configs_default_to_variational_dequantization_old_checkpoints_keep_uniform(
    model_name,
):
    """New runs draw their noise from a learned q(u | x); a config stored before the option
    existed rebuilds the uniform-noise model (no dequantizer) it was trained with, and an old
    RealNVP its masked checkerboard couplings."""
    from genflow.bijections.coupling import CheckerboardCoupling

    cfg = _compose("train", [f"model={model_name}", *SMALL[model_name]])
    new = build_model(cfg.model)
    assert new.dequantizer is not None
    old = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("dequantization", "dequantizer_hidden", "dequantizer_couplings", "checkerboard"):
        old.pop(key, None)
    rebuilt = build_model(old)
    assert rebuilt.dequantizer is None
    assert not any(isinstance(m, CheckerboardCoupling) for m in rebuilt.modules())
    if model_name == "realnvp":
        assert any(isinstance(m, CheckerboardCoupling) for m in new.modules())


def _affine_layers(model):
    from genflow.bijections.autoregressive import MaskedAffineAutoregressive

    return [m for m in model.modules() if isinstance(m, MaskedAffineAutoregressive)]
