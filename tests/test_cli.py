"""The CLI end to end on tiny configs: train -> eval -> sample -> resume, sweeps, errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import (
    MNIST_ROOT,
    MODEL_TINY,
    RUN_TINY,
    TINY,
    last_json_line,
    read_records,
    run_dirs,
    run_genflow,
)

from genflow.cli import main


def test_train_eval_sample_end_to_end(workdir):
    proc = run_genflow(["train", *TINY], workdir)
    [run_dir] = run_dirs(workdir)
    assert run_dir.parent.name == "realnvp-digits"
    for name in (
        ".hydra/config.yaml",
        "train.log",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "eval.json",
        "samples/step_0000020.png",
    ):
        assert (run_dir / name).is_file(), name
    records = read_records(run_dir)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all("step" in r and "split" in r for r in records)
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20]
    assert all(r["bpd"] > 0 for r in records if "bpd" in r)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 20 and ckpt["config"]["model"]["hidden_channels"] == 8
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert "test bpd" in proc.stdout + proc.stderr

    proc = run_genflow(["eval", f"run={run_dir}"], workdir)
    summary = last_json_line(proc.stdout)
    assert summary == json.loads((run_dir / "eval.json").read_text())
    assert summary["split"] == "test" and summary["num_examples"] == 447
    # which model, trained with which overrides; and no empty eval.log left in the run
    assert summary["model"] == "RealNVP" and "model.hidden_channels=8" in summary["overrides"]
    assert not (run_dir / "eval.log").exists()
    assert 0 < summary["bpd"] < 8
    # a checkpoint file names its run too, and the seeded evaluation gives the same numbers
    best = run_dir / "checkpoints" / "best.pt"
    again = last_json_line(run_genflow(["eval", f"run={best}"], workdir).stdout)
    assert again == summary
    # another checkpoint's evaluation goes to its own file: eval.json stays best.pt's
    last = last_json_line(
        run_genflow(["eval", f"run={run_dir}", "checkpoint=last"], workdir).stdout
    )
    assert last["checkpoint"] == "last.pt"
    assert json.loads((run_dir / "eval_last.json").read_text()) == last
    assert json.loads((run_dir / "eval.json").read_text()) == summary
    # the tail of the per-example bpd, in eval.json and in the final test record alike
    assert summary["bpd_median"] <= summary["bpd_p99"] <= summary["bpd_max"]
    assert 0 <= summary["worst_index"] < 447
    [test_record] = [r for r in records if r["split"] == "test"]
    for key in ("bpd", "nll", "bpd_median", "bpd_p99", "bpd_max", "worst_index"):
        assert test_record[key] == pytest.approx(summary[key], rel=1e-6), key

    proc = run_genflow(
        ["sample", f"run={run_dir}", "sample.n=9", "sample.temperature=0.7"], workdir
    )
    result = last_json_line(proc.stdout)
    samples = torch.load(result["tensor"], weights_only=True)
    assert samples.shape == (9, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 16
    assert Path(result["image"]).is_file()
    # the same seed gives the same samples
    proc = run_genflow(
        ["sample", f"run={run_dir}", "sample.n=9", "sample.temperature=0.7"], workdir
    )
    assert torch.equal(
        torch.load(last_json_line(proc.stdout)["tensor"], weights_only=True), samples
    )


def test_four_run_sweep_makes_one_run_dir_each_in_one_wandb_group(workdir):
    run_genflow(
        [
            "train",
            "-m",
            *TINY,
            "trainer.max_steps=5",
            "trainer.eval_every=5",
            "logger=wandb",
            "logger.mode=offline",
            "optimizer.lr=1e-3,3e-4",
            "seed=0,1",
        ],
        workdir,
    )
    dirs = [d for d in run_dirs(workdir) if "multirun" in d.parts]
    # what W&B holds of each run (its own run file, read back): the sweep's group, and the
    # swept values as config keys, so W&B's grouping and parallel-coordinates views see them
    from conftest import wandb_records

    for run_dir in dirs:
        [path] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        [run] = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert run.run_group == dirs[0].parent.name
        swept = [o for o in config["overrides"] if o.startswith(("optimizer.lr=", "seed="))]
        assert len(swept) == 2 and config["seed"] in (0, 1)
        assert config["optimizer"]["lr"] in (1e-3, 3e-4)
    assert len(dirs) == 4 and all((d / "eval.json").is_file() for d in dirs)
    configs = [torch.load(d / "checkpoints" / "last.pt", weights_only=True)["config"] for d in dirs]
    assert {(c["optimizer"]["lr"], c["seed"]) for c in configs} == {
        (1e-3, 0),
        (1e-3, 1),
        (3e-4, 0),
        (3e-4, 1),
    }
    assert {c["logger"]["group"] for c in configs} == {dirs[0].parent.name}
    # the sweep (and its W&B group) is named after what it sweeps, each run after its values
    assert dirs[0].parent.name.endswith("-optimizer.lr+seed")
    assert sorted(d.name for d in dirs) == [
        "0-realnvp-digits-optimizer.lr=0.001,seed=0",
        "1-realnvp-digits-optimizer.lr=0.001,seed=1",
        "2-realnvp-digits-optimizer.lr=0.0003,seed=0",
        "3-realnvp-digits-optimizer.lr=0.0003,seed=1",
    ]


def test_a_failed_run_does_not_stop_the_sweep(workdir):
    proc = run_genflow(
        [
            "train",
            "-m",
            *TINY,
            "trainer.max_steps=5",
            "trainer.eval_every=5",
            "trainer.batch_size=5000,32",
        ],
        workdir,
        check=False,
    )
    assert proc.returncode == 1
    assert "trainer.batch_size=5000 is larger than the training split" in proc.stderr
    assert "1 run(s) of the sweep failed" in proc.stderr
    finished = [d for d in run_dirs(workdir) if (d / "eval.json").is_file()]
    assert len(finished) == 1 and finished[0].name.startswith("1-")


@pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="the optuna extra is not installed"
)
def test_optuna_search_runs_trials_and_reports_the_best(workdir):
    run_genflow(
        [
            "train",
            "hparams_search=realnvp_digits",
            "hydra.sweeper.n_trials=3",
            *TINY,
            "trainer.max_steps=6",
            "trainer.eval_every=3",
        ],
        workdir,
    )
    [sweep] = list(workdir.glob("outputs/multirun/*"))
    trials = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(trials) == 3 and all((d / "eval.json").is_file() for d in trials)
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optimizer.lr" in results and "best_value" in results


def test_two_dimensional_toy_trains_and_samples_a_scatter_plot(workdir):
    run_genflow(
        [
            "train",
            "dataset=moons",
            *TINY,
            "model.hidden_features=16",
            "model.num_layers=2",
            "dataset.n_train=512",
            "dataset.n_val=128",
            "dataset.n_test=128",
        ],
        workdir,
    )
    [run_dir] = run_dirs(workdir)
    proc = run_genflow(["sample", f"run={run_dir}", "sample.n=50"], workdir)
    result = last_json_line(proc.stdout)
    assert torch.load(result["tensor"], weights_only=True).shape == (50, 2)
    assert Path(result["image"]).stat().st_size > 1000
    assert Path(result["density"]).stat().st_size > 1000
    assert (run_dir / "samples" / "density_0000020.png").is_file()  # written during training too


@pytest.mark.parametrize("model", ["nice", "maf"])
def test_vector_flows_train_on_flattened_digits(workdir, model):
    run_genflow(["train", f"model={model}", *RUN_TINY, *MODEL_TINY[model]], workdir)
    [run_dir] = run_dirs(workdir)
    assert json.loads((run_dir / "eval.json").read_text())["bpd"] > 0
    assert (run_dir / "samples" / "step_0000020.png").is_file()


@pytest.mark.parametrize("model", ["pixelcnn", "wavenet", "pixelcnnpp"])
def test_autoregressive_models_train_evaluate_and_sample(workdir, model):
    run_genflow(["train", f"model={model}", *RUN_TINY, *MODEL_TINY[model]], workdir)
    [run_dir] = run_dirs(workdir)
    summary = last_json_line(run_genflow(["eval", f"run={run_dir}"], workdir).stdout)
    # exact log-likelihoods of discrete data: nll >= 0, over the whole test split
    assert 0 < summary["bpd"] < 8 and summary["num_examples"] == 447
    result = last_json_line(
        run_genflow(
            ["sample", f"run={run_dir}", "sample.n=4", "sample.temperature=0.8"], workdir
        ).stdout
    )
    samples = torch.load(result["tensor"], weights_only=True)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16


def test_glow_trains_and_interpolates_between_test_images(workdir):
    from omegaconf import OmegaConf

    from genflow.data import load_dataset

    run_genflow(["train", "model=glow", *RUN_TINY, *MODEL_TINY["glow"]], workdir)
    [run_dir] = run_dirs(workdir)
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert all(
        v for k, v in ckpt["model"].items() if k.endswith("initialized")
    )  # ActNorm ran its init
    proc = run_genflow(
        ["sample", f"run={run_dir}", "sample.mode=interpolate", "sample.pairs=2", "sample.steps=5"],
        workdir,
    )
    result = last_json_line(proc.stdout)
    rows = torch.load(result["tensor"], weights_only=True)
    assert rows.shape == (2, 5, 1, 8, 8)
    test = load_dataset(OmegaConf.create(ckpt["config"]["dataset"])).test.float()
    for endpoint in (*rows[:, 0], *rows[:, -1]):  # encode -> decode is exact at the ends
        assert (test == endpoint).flatten(1).all(1).any()
    assert Path(result["image"]).is_file()


def test_wandb_offline_needs_no_account(workdir):
    args = [
        "train",
        *[o for o in TINY if o != "logger=none"],
        "logger=wandb",
        "trainer.max_steps=10",
    ]
    run_genflow(args, workdir)
    [run_dir] = run_dirs(workdir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainer"][
        "wandb_id"
    ]
    assert run_id and offline[0].name.endswith(run_id)
    # resuming continues the same W&B run id
    run_genflow(["train", f"resume={run_dir}", "trainer.max_steps=15"], workdir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith(run_id) for d in offline)


def test_an_offline_wandb_run_holds_the_best_value_the_config_and_the_checkpoints(workdir):
    """What W&B writes (read back from its run file): the monitored metric declared with its
    direction, so the summary holds its best value; the resolved config with the run
    directory and the command line's overrides; best.pt and last.pt as model artifacts."""
    import base64
    import hashlib

    from conftest import wandb_records

    args = [o for o in TINY if o != "logger=none"]
    args += ["logger=wandb", "logger.log_checkpoints=true", "optimizer.lr=0.002"]
    run_genflow(["train", *args], workdir)
    [run_dir] = run_dirs(workdir)
    [path] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(path))
    [metric] = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert metric.name == "val/bpd" and metric.summary.min and not metric.summary.max
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    val = [r["bpd"] for r in read_records(run_dir) if r["split"] == "val"]
    assert len(val) >= 2 and summary["val/bpd"] == {"min": min(val)}
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["run_dir"] == str(run_dir.resolve())
    assert "optimizer.lr=0.002" in config["overrides"] and config["optimizer"]["lr"] == 0.002
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert {a.name for a in artifacts} == {f"model-{run.run_id}"}
    by_file = {a.manifest.contents[0].path: a for a in artifacts}
    assert set(by_file) == {"best.pt", "last.pt"} and "best" in by_file["best.pt"].aliases
    for name, artifact in by_file.items():
        digest = base64.b64encode(
            hashlib.md5((run_dir / "checkpoints" / name).read_bytes()).digest()
        )
        assert artifact.type == "model" and artifact.manifest.contents[0].digest == digest.decode()


def test_help_lists_commands_and_groups(workdir, capsys):
    proc = run_genflow(["--help"], workdir)
    assert all(c in proc.stdout for c in ("train", "eval", "sample", "report"))
    assert main([]) == 2 and "usage: genflow <command>" in capsys.readouterr().err
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("genflow 0.")
    proc = run_genflow(["train", "--help"], workdir)
    assert (
        "model: cnf, energy_flow, gated_pixelcnn, glow, hvae, maf, nice, nsf, pixelcnn, pixelcnnpp, pixelrnn, realnvp, vae, vqvae, wavenet"
        in proc.stdout
        and "model/posterior: gaussian, householder, iaf, nsf, planar, radial, sylvester"
        in proc.stdout
        and "dataset:" in proc.stdout
        and "optimizer/scheduler:" in proc.stdout
    )
    # eval's help names what eval reads, not the training groups (the run holds those)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # in-process, Hydra exits after its help
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "genflow eval run=<run_dir> [checkpoint=best|last|<file>]" in out
    assert "model:" not in out and "optimizer/scheduler:" not in out


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_realnvp_on_real_mnist_trains_evaluates_and_samples(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    run_genflow(
        [
            "train",
            "dataset=mnist",
            f"dataset.root={MNIST_ROOT}",
            *TINY,
            "trainer.max_steps=4",
            "trainer.eval_every=4",
            "trainer.sample_every=4",
            "trainer.eval_batch_size=2000",
            "dataset.val_size=1000",
            "model.num_scales=3",
        ],
        workdir,
    )
    [run_dir] = run_dirs(workdir)
    summary = last_json_line(run_genflow(["eval", f"run={run_dir}"], workdir).stdout)
    assert summary["num_examples"] == 10000 and math.isfinite(summary["bpd"]) and summary["bpd"] > 0
    result = last_json_line(run_genflow(["sample", f"run={run_dir}", "sample.n=4"], workdir).stdout)
    assert torch.load(result["tensor"], weights_only=True).shape == (4, 1, 28, 28)
    # data that moved since training: eval's advice is its own dataset_root, not a download
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # in-process, Hydra's job exits
        main(["eval", f"run={run_dir}", f"dataset_root={workdir / 'moved'}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "dataset 'mnist' not found under" in err and "pass dataset_root=<the folder" in err
    assert "download" not in err
