"""The model contract (genflow/models/base.py) held by every model option of conf/model, as
the CLI composes it (at the tiny sizes of conftest.MODEL_TINY, on digits): log_prob's shape,
dtype and finiteness, samples in [0, levels), a state_dict round trip, eval mode reaching
every submodule, float64, and the declared capabilities matching what the model does."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_TINY, compose_config
from sklearn.datasets import load_digits

from genflow.config import config_dir
from genflow.models.base import GenerativeModel
from genflow.tasks.common import build_model

# every model of data (energy_flow fits a 2-D energy; its contract is in test_energy_flow.py)
MODELS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if p.stem != "energy_flow")
X = torch.from_numpy(load_digits().data[:6]).to(torch.long).view(6, 1, 8, 8)


def test_every_model_option_has_a_tiny_size():
    assert MODELS == sorted(MODEL_TINY)


def _build(name: str, seed: int = 0) -> GenerativeModel:
    cfg = compose_config([f"model={name}", *MODEL_TINY[name]])
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    if model.iw_samples is not None:
        model.iw_samples = 4
    model.initialize(X)
    with torch.no_grad():  # off the zero-initialised identity, so the round trip means something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _seeded_log_prob(model: GenerativeModel, x: torch.Tensor, seed: int = 11) -> torch.Tensor:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return model.log_prob(x)


@pytest.fixture(params=MODELS)
def model(request) -> GenerativeModel:
    return _build(request.param)


def test_declared_contract(model):
    assert isinstance(model, GenerativeModel)
    assert model.levels == 17 and model.event_shape == (1, 8, 8) and model.num_dims == 64
    for flag in ("image_only", "discrete_only", "takes_posterior", "can_encode"):
        assert isinstance(getattr(type(model), flag), bool), flag
    assert model.iw_samples is None or model.iw_samples == 4
    # what trainer.monitor may pick is what evaluation reports
    with torch.no_grad():
        assert set(model.eval().evaluate(X)) == set(type(model).eval_metrics)


def test_log_prob_is_one_finite_float_per_example_and_bounded_by_one(model):
    log_p = _seeded_log_prob(model.eval(), X)
    assert log_p.shape == (6,) and log_p.dtype == torch.float32 and torch.isfinite(log_p).all()
    # a probability of discrete data (or a lower bound on one) cannot exceed 1
    assert (log_p <= 1e-4).all()


def test_eval_mode_reaches_every_submodule_and_is_reproducible(model):
    model.eval()
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(_seeded_log_prob(model, X), _seeded_log_prob(model, X))
    model.train()
    assert all(m.training for m in model.modules())


def test_samples_are_levels(model):
    with torch.no_grad():
        samples = model.eval().sample(3)
    assert samples.shape == (3, 1, 8, 8)
    assert (samples == samples.round()).all() and samples.min() >= 0 and samples.max() <= 16


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    trained, fresh = _build(name), _build(name, seed=1)
    before = _seeded_log_prob(fresh.eval(), X)
    fresh.load_state_dict(trained.state_dict())
    after = _seeded_log_prob(fresh, X)
    torch.testing.assert_close(after, _seeded_log_prob(trained.eval(), X))
    assert not torch.allclose(before, after)  # the weights differed before loading


def test_float64_runs_in_float64(model):
    single = _seeded_log_prob(model.eval(), X)
    double = _seeded_log_prob(model.double(), X)
    assert double.dtype == torch.float64 and torch.isfinite(double).all()
    if model.discrete_only:  # exact log p(x), no noise drawn: the same number to fp32 rounding
        torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        assert torch.isfinite(model.sample(2).double()).all()


def test_encoders_decode_what_they_encode(model):
    if not model.can_encode:
        with pytest.raises(NotImplementedError, match="has no encoder"):
            model.encode(X)
        return
    with torch.no_grad():
        z = model.eval().encode(X)
        back = model.decode(z)
    assert z.shape[0] == 6 and back.shape == (6, 1, 8, 8) and torch.isfinite(back).all()
