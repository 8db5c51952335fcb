"""genflow builds only its own classes from a config: a stored config that names anything else
(builtins.open, os.system, a module outside genflow) is refused before any import or call, by
eval, sample, report, resume and load_run; a damaged checkpoint's structure is one sentence."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from conftest import MODEL_TINY, TINY, compose_config, run_dirs, run_genflow
from omegaconf import OmegaConf

import genflow
from genflow.config import config_dir
from genflow.engine.checkpoint import load_checkpoint, save_checkpoint
from genflow.errors import GenflowError
from genflow.tasks.common import build_model
from genflow.trust import check_model_config

VAE = [
    "model=vae",
    "model/posterior=nsf",
    "model/prior=flow",
    *MODEL_TINY["vae"],
]


def _vae_model_config() -> dict:
    return OmegaConf.to_container(compose_config(VAE).model, resolve=True)


@pytest.mark.parametrize("name", sorted(MODEL_TINY))
def test_every_model_config_genflow_writes_is_accepted(name):
    cfg = compose_config([f"model={name}", *MODEL_TINY[name]])
    check_model_config(cfg.model, "the model config")  # unresolved, as Hydra composes it
    check_model_config(OmegaConf.to_container(cfg.model, resolve=True), "a checkpoint")


def test_the_vae_parts_genflow_writes_are_accepted():
    groups = config_dir() / "model"
    for posterior in sorted(p.stem for p in (groups / "posterior").glob("*.yaml")):
        for prior in sorted(p.stem for p in (groups / "prior").glob("*.yaml")):
            cfg = compose_config(
                ["model=vae", f"model/posterior={posterior}", f"model/prior={prior}"]
            )
            check_model_config(cfg.model, "the model config")


# (where, what): a _target_ put at that place of a VAE's model config
REFUSED_TARGETS = [
    ((), "builtins.open"),
    ((), "os.system"),
    (("posterior",), "subprocess.run"),
    (("prior",), "shutil.copyfile"),
    ((), "numpy.load"),
    ((), "genflow.models.vae.os.system"),  # an attribute chain through a genflow module
    ((), "genflow.models.priors.StandardPrior"),  # genflow's, but not a model
    (("posterior",), "genflow.models.vae.VAE"),  # genflow's model, where a posterior goes
    (("prior",), "genflow.models.priors.Prior"),  # the abstract base
    ((), "${oc.env:GENFLOW_EVIL_TARGET}"),  # text that resolves to something else later
    ((), 3),
]


@pytest.mark.parametrize(
    ("where", "target"),
    REFUSED_TARGETS,
    ids=[".".join(("model", *w, str(t))) for w, t in REFUSED_TARGETS],
)
def test_a_target_that_is_not_genflows_own_is_refused(where, target):
    cfg = _vae_model_config()
    node = cfg
    for key in where:
        node = node[key]
    node["_target_"] = target
    with pytest.raises(GenflowError) as err:
        check_model_config(cfg, "checkpoint run/checkpoints/best.pt")
    message = str(err.value)
    key = ".".join(("model", *where, "_target_"))
    assert (
        message.startswith("checkpoint run/checkpoints/best.pt: ") and f"{key}={target}" in message
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    "nested",
    [
        {"decoder": {"_target_": "genflow.models.vae.VAE"}},  # a place genflow builds nothing at
        {
            "posterior": {
                "_target_": "genflow.models.posteriors.nsf",
                "net": {"_target_": "os.system"},
            }
        },
        {"layers": [{"_target_": "builtins.exec"}]},  # inside a list
        {"_args_": ["x"]},
        {"posterior": {"_target_": "genflow.models.posteriors.gaussian", "_partial_": True}},
        {"_recursive_": False},
    ],
)
def test_nested_targets_and_hydras_other_keys_are_refused(nested):
    cfg = {**_vae_model_config(), **nested}
    with pytest.raises(GenflowError, match=r"^a file: model\."):
        check_model_config(cfg, "a file")


def test_a_module_outside_genflow_is_never_imported(tmp_path, monkeypatch):
    sentinel = tmp_path / "imported"
    (tmp_path / "genflow_trust_probe.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _vae_model_config()
    cfg["prior"]["_target_"] = "genflow_trust_probe.Prior"
    with pytest.raises(GenflowError):
        check_model_config(cfg, "a file")
    assert not sentinel.exists() and "genflow_trust_probe" not in sys.modules


def _stored_run(tmp_path, model_cfg: dict, name: str = "run"):
    """A run directory with a best.pt whose stored model config is ``model_cfg``."""
    cfg = compose_config(VAE)
    state = {
        "model": build_model(cfg.model).state_dict(),
        "ema": None,
        "trainer": {"step": 3},
        "config": {**OmegaConf.to_container(cfg, resolve=True), "model": model_cfg},
    }
    run_dir = tmp_path / name
    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
    return run_dir


def _poisoned(sentinel, where: tuple[str, ...]) -> dict:
    """The VAE's model config with ``builtins.open(sentinel, "w")`` at ``where``."""
    cfg = _vae_model_config()
    node = cfg
    for key in where:
        node = node[key]
    node.clear()
    node.update({"_target_": "builtins.open", "file": str(sentinel), "mode": "w"})
    return cfg


@pytest.mark.parametrize("where", [(), ("posterior",), ("prior",)])
def test_load_run_refuses_a_checkpoint_naming_builtins_open(tmp_path, where):
    sentinel = tmp_path / "sentinel"
    run_dir = _stored_run(tmp_path, _poisoned(sentinel, where))
    with pytest.raises(GenflowError, match="is not .* of genflow's own") as err:
        genflow.load_run(run_dir)
    assert "best.pt" in str(err.value) and not sentinel.exists()


def test_eval_sample_and_report_refuse_it_from_the_command_line(tmp_path):
    sentinel = tmp_path / "sentinel"
    run_dir = _stored_run(tmp_path, _poisoned(sentinel, ("posterior",)))
    for args in (
        ["eval", f"run={run_dir}", "device=cpu"],
        ["sample", f"run={run_dir}", "device=cpu"],
    ):
        proc = run_genflow(args, tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert (
            "model.posterior._target_=builtins.open" in proc.stderr
            and "Traceback" not in proc.stderr
        )
    run_genflow(["report", str(run_dir)], tmp_path, check=False)  # builds nothing: only reads
    assert not sentinel.exists()


def test_a_resume_does_not_replay_stored_hydra_callbacks_or_bad_targets(workdir):
    run_genflow(["train", *TINY], workdir)
    (run_dir,) = run_dirs(workdir)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    stored = list(OmegaConf.load(overrides))
    sentinel = workdir / "sentinel"
    callback = [  # Hydra would call this when the job starts, were it replayed
        "+hydra.callbacks.evil._target_=builtins.open",
        f"+hydra.callbacks.evil.file={sentinel}",
        "+hydra.callbacks.evil.mode=w",
        "++hydra/callbacks=none",
    ]
    OmegaConf.save(OmegaConf.create([*stored, *callback]), overrides)
    run_genflow(["train", f"resume={run_dir}", "trainer.max_steps=25"], workdir)
    assert not sentinel.exists()

    OmegaConf.save(OmegaConf.create([*stored, "+model.evil._target_=builtins.open"]), overrides)
    proc = run_genflow(["train", f"resume={run_dir}", "trainer.max_steps=30"], workdir, check=False)
    assert proc.returncode == 2 and "model.evil._target_=builtins.open" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not sentinel.exists()


def _damaged(state: dict, key: str, value) -> dict:
    state = copy.deepcopy(state)
    state[key] = value
    return state


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", 5, "its 'model' entry is not a set of named tensors"),
        ("model", {"w": b"bytes"}, "its 'model' entry is not a set of named tensors"),
        ("ema", [1, 2], "its 'ema' entry is not a set of named tensors"),
        ("config", "model", "its 'config' entry is not a mapping"),
        ("trainer", 7, "its 'trainer' entry is not a mapping"),
    ],
)
def test_a_checkpoint_of_the_wrong_structure_is_one_sentence(tmp_path, key, value, message):
    run_dir = _stored_run(tmp_path, _vae_model_config())
    path = run_dir / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    save_checkpoint(_damaged(state, key, value), path)
    with pytest.raises(GenflowError, match=f"^checkpoint {path} is damaged: {message}"):
        load_checkpoint(path)
    with pytest.raises(GenflowError, match="is damaged"):
        genflow.load_run(run_dir)


def test_a_checkpoint_without_a_model_config_is_one_sentence(tmp_path):
    run_dir = _stored_run(tmp_path, {"hidden": 3})
    with pytest.raises(GenflowError, match="damaged: its 'config' entry holds no model config"):
        genflow.load_run(run_dir)


def test_weights_that_do_not_fit_the_stored_model_are_one_sentence(tmp_path):
    run_dir = _stored_run(tmp_path, _vae_model_config())
    path = run_dir / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(1, 2, 3)
    save_checkpoint(state, path)
    with pytest.raises(
        GenflowError, match="holds weights that do not fit the model its config describes"
    ):
        genflow.load_run(run_dir)
