"""A table of bad inputs: each gets one sentence naming the key and what is valid, exit code 2,
and nothing written (no run directory for what the command line alone shows is wrong)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, run_genflow

from genflow.cli import main

# Found before Hydra runs: checked in-process, so the table stays fast.
COMMAND_LINE = [
    (["trian"], "unknown command 'trian'; valid commands: train, eval, sample"),
    (
        ["train", "model=realnvpp"],
        "unknown model 'realnvpp'; valid choices: cnf, energy_flow, gated_pixelcnn, glow, hvae, maf, nice, nsf, pixelcnn, pixelcnnpp, pixelrnn, realnvp, vae, vqvae, wavenet",
    ),
    (
        ["train", "dataset=mnsit"],
        "unknown dataset 'mnsit'; valid choices: binarized_mnist, breast_cancer, bsds300, celeba, celeba_hq, checkerboard, cifar10",
    ),
    (["train", "optimizer=sgd"], "unknown optimizer 'sgd'; valid choices: adam, adamax, adamw"),
    (["train", "-m", "optimizer=adam,sgd"], "unknown optimizer 'sgd'; valid choices:"),
    (
        ["train", "optimizer/scheduler=linear"],
        "unknown optimizer/scheduler 'linear'; valid choices: constant, cosine",
    ),
    (["train", "device=tpu"], "unknown device 'tpu'; valid choices: auto, cpu, cuda, ddp"),
    (
        ["train", "device=ddp", "device.nproc_per_node=0"],
        "device.nproc_per_node=0 is not valid; device.nproc_per_node must be a positive integer",
    ),
    (
        ["train", "device=ddp", "device.accelerator=tpu"],
        "device.accelerator='tpu' is not valid; device.accelerator must be one of auto, cpu, cuda",
    ),
    (
        ["train", "trainer.max_step=5"],
        "unknown config key 'trainer.max_step'; keys under trainer: accumulate_steps, batch_size",
    ),
    (
        ["train", "optimizer.lr=-1e-3"],
        "optimizer.lr=-0.001 is not valid; optimizer.lr must be a positive number",
    ),
    (
        ["train", "trainer.batch_size=0"],
        "trainer.batch_size=0 is not valid; trainer.batch_size must be a positive integer",
    ),
    (
        ["train", "trainer.max_steps=ten"],
        "trainer.max_steps='ten' is not valid; trainer.max_steps must be a positive integer",
    ),
    (
        ["train", "dataset=mnist", "dataset.n_bits=9"],
        "dataset.n_bits=9 is not valid; dataset.n_bits must be an integer from 1 to 8",
    ),
    (
        ["train", "dataset.n_bits=4"],
        "dataset.n_bits applies to 8-bit datasets (mnist, fashion_mnist, cifar10, image_folder, image_stream, imagenet32, imagenet64, celeba, celeba_hq); dataset 'digits' has fixed levels=17",
    ),
    (
        ["train", "model.event_shape=[3,8,8]"],
        "model.event_shape=[3, 8, 8] does not match dataset.shape=[1, 8, 8]",
    ),
    (
        ["train", "model=glow", "dataset=moons"],
        "model Glow needs image data (C, H, W) but dataset 'moons' has shape [2]",
    ),
    (
        ["train", "model=wavenet", "dataset=pinwheel"],
        "model WaveNet models discrete values but dataset 'pinwheel' is continuous",
    ),
    (["train", "seed=abc"], "seed='abc' is not valid; seed must be an integer"),
    (
        ["train", "model=nsf", "model.num_bins=1"],
        "model.num_bins must be an integer >= 2, got 1",
    ),
    (
        ["train", "model=nsf", "model.tail_bound=0"],
        "model.tail_bound must be a positive number (the spline acts on [-B, B]), got 0",
    ),
    (
        ["train", "model=vae", "model/posterior=nsf", "model.posterior.num_bins=1"],
        "model.posterior.num_bins must be an integer >= 2, got 1",
    ),
    (
        [
            "train",
            "model=vae",
            "model/prior=flow",
            "model.prior.kind=nsf",
            "model.prior.tail_bound=0",
        ],
        "model.prior.tail_bound must be a positive number",
    ),
    (
        ["train", "model=nsf", "model.kind=masked"],
        "model.kind must be one of coupling, autoregressive, got 'masked'",
    ),
    (
        ["train", "model.hidden_channels=0"],
        "model.hidden_channels=0 is not valid; model.hidden_channels must be a positive integer",
    ),
    (
        ["train", "model=glow", "model.num_levels=0"],
        "model.num_levels=0 is not valid; model.num_levels must be a positive integer",
    ),
    (
        ["train", "model=vae", "model/posterior=planar", "model.posterior.num_flows=-1"],
        "model.posterior.num_flows=-1 is not valid; model.posterior.num_flows must be a positive",
    ),
    (
        ["train", "dataset.n_train=-5"],
        "dataset.n_train=-5 is not valid; dataset.n_train must be a positive integer",
    ),
    (
        ["train", "model=pixelcnn", "model.num_classes=1"],
        "model.num_classes must be null or an integer >= 2, got 1",
    ),
    (
        ["train", "dataset.n_train=1500"],
        "dataset.n_train=1500 and dataset.n_val=350 must be positive and leave test images",
    ),
    (
        ["train", "+trainer.maxsteps=5"],
        "unknown config key 'trainer.maxsteps'; keys under trainer: accumulate_steps, batch_size",
    ),
    (
        ["train", "optimizer.scheduler.min_lr_ratio=-5"],
        "optimizer.scheduler.min_lr_ratio=-5 is not valid; optimizer.scheduler.min_lr_ratio must be a number in [0, 1]",
    ),
    (
        ["train", "trainer.monitor.metric=elbo"],
        "trainer.monitor.metric=elbo is not a validation metric of RealNVP; valid: nll, bpd",
    ),
    (
        ["train", "trainer.monitor.mode=lowest"],
        "trainer.monitor.mode='lowest' is not valid; trainer.monitor.mode must be one of min, max",
    ),
    (
        ["train", "model=vae", "model/posterior=sylvestre"],
        "unknown model/posterior 'sylvestre'; valid choices: gaussian, householder, iaf, nsf, planar, radial, sylvester",
    ),
    (
        ["train", "model/posterior=planar"],
        "model/posterior is a part of model=vae; the default model has no posterior (add model=vae)",
    ),
    (
        ["train", "model=maf", "model/posterior=iaf"],
        "model/posterior is a part of model=vae; maf has no posterior (add model=vae)",
    ),
    (
        ["train", "model=vae", "model/prior=vamp"],
        "unknown model/prior 'vamp'; valid choices: flow, mog, standard, vampprior",
    ),
    (
        ["train", "model=glow", "model/prior=mog"],
        "model/prior is a part of model=vae; glow has no prior (add model=vae)",
    ),
    (
        ["train", "model=vae", "model/prior=mog", "model.prior.num_components=0"],
        "model.prior.num_components=0 is not valid; model.prior.num_components must be a positive",
    ),
    (
        ["train", "model=vae", "model/prior=flow", "model.prior.kind=glow"],
        "model/prior: unknown flow prior kind 'glow'; valid: realnvp, maf",
    ),
    (
        ["train", "model=vae", "model/prior=flow", "model.latent_features=1"],
        "model/prior: a flow prior needs model.latent_features >= 2, got 1",
    ),
    (
        ["train", "model=pixelrnn", "model.variant=gru"],
        "model.variant='gru' is not valid; model.variant must be one of row_lstm, diagonal_bilstm",
    ),
    (
        ["train", "model=energy_flow", "dataset=moons"],
        "model=energy_flow fits one of the target densities u1, u2, u3, u4; use dataset=u1 (..u4), not dataset=moons",
    ),
    (
        ["train", "model=energy_flow", "dataset=u2", "model.flow=glow"],
        "unknown energy flow 'glow'; valid: planar, radial, sylvester, iaf, realnvp, maf",
    ),
    (
        ["train", "model=vae", "model.mc_samples=0"],
        "model.mc_samples must be a positive integer, got 0",
    ),
    (
        ["train", "model=vae", "model.likelihood=bernoulli"],
        "model.likelihood=bernoulli needs binary data (dataset.levels=2), but the dataset has 17 levels",
    ),
    (
        ["train", "model=vae", "model/posterior=sylvester", "model.posterior.variant=square"],
        "model/posterior: unknown Sylvester variant 'square'; valid: orthogonal, householder, triangular",
    ),
    (
        ["train", "model=vae", "model/posterior=sylvester", "model.posterior.num_ortho_vectors=40"],
        "model.posterior.num_ortho_vectors must be in [1, 32] (model.latent_features), got 40",
    ),
    (
        ["train", "model=vae", "model.network=conv", "dataset=moons"],
        "model.network=conv needs image height and width divisible by 4",
    ),
    (
        ["train", "model=vae", "model.kl_warmup_steps=-5"],
        "model.kl_warmup_steps=-5 is not valid; model.kl_warmup_steps must be an integer >= 0",
    ),
    (
        ["train", "model=vae", "model.likelihood=gaussian", "model.gaussian_scale=wide"],
        "model.gaussian_scale=wide must be 'learned' or a positive number",
    ),
    (
        ["train", "model=vae", "model.dropout=1.5"],
        "model.dropout must be a number in [0, 1), got 1.5",
    ),
    (
        ["train", "trainer.precision=fp8"],
        "trainer.precision='fp8' is not valid; trainer.precision must be one of fp32, bf16, fp16",
    ),
    (
        ["train", "trainer.ema=1.5"],
        "trainer.ema=1.5 is not valid; trainer.ema must be null or a decay in (0, 1), e.g. 0.999",
    ),
    (
        ["train", "model=vae", "eval.iw_samples=0"],
        "eval.iw_samples=0 is not valid; eval.iw_samples must be a positive integer",
    ),
    (
        ["train", "logger.mode=onlin"],
        "logger.mode='onlin' is not valid; logger.mode must be one of offline, online, disabled",
    ),
    (
        ["train", "logger.run_name=" + "r" * 200],
        "logger.run_name='rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr... (200 characters) is not valid; "
        "logger.run_name must be null or at most 128 characters",
    ),
    (
        ["train", "model.dequantizer_hidden=0"],
        "model.dequantizer_hidden=0 is not valid; model.dequantizer_hidden must be a positive integer",
    ),
    (
        ["train", "model.dequantization=learned"],
        "model.dequantization='learned' is not valid; model.dequantization must be one of "
        "uniform, variational",
    ),
    (
        ["train", "model.checkerboard=diagonal"],
        "model.checkerboard='diagonal' is not valid; model.checkerboard must be one of "
        "gathered, masked",
    ),
    (
        ["train", "trainer.grad_clip=-1"],
        "trainer.grad_clip=-1 is not valid; trainer.grad_clip must be a positive number or null",
    ),
    (
        ["train", "optimizer.betas=[0.9,1.5]"],
        "optimizer.betas=[0.9, 1.5] is not valid; optimizer.betas must be two numbers in [0, 1)",
    ),
    (
        ["train", "trainer.on_bad_steps=ignore"],
        "trainer.on_bad_steps='ignore' is not valid; trainer.on_bad_steps must be one of rollback, stop",
    ),
    (["train", "trainer.max_steps=[1"], "no viable alternative at input '[1'"),
    (
        ["train", "resume=does/not/exist"],
        "resume=does/not/exist: no such run directory or checkpoint file",
    ),
    (["eval"], "genflow eval needs run=<run_dir>"),
    (
        ["train", "output_root=/dev/null/runs"],
        "output_root=/dev/null/runs: /dev/null is a file, not a directory",
    ),
    (
        ["train", "output_root=/proc/genflow"],
        "output_root=/proc/genflow: cannot create directories under /proc",
    ),
    (
        ["train", f"output_root={'r' * 300}"],
        "output_root: the name 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrr...' is 300 bytes long",
    ),
    (
        ["train", "dataset=image_folder"],
        "dataset=image_folder needs dataset.path=<folder>",
    ),
    (
        ["train", "model=réalnvp"],
        "the override model=réalnvp holds characters that Hydra's override grammar takes only "
        "inside quotes; write model='réalnvp'",
    ),
    (
        ["train", "model='réalnvp'"],
        "unknown model ''réalnvp''; valid choices:",
    ),
    (
        ["sample", "run=does/not/exist"],
        "run=does/not/exist: no such run directory or checkpoint file",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), COMMAND_LINE, ids=[" ".join(a) for a, _ in COMMAND_LINE]
)
def test_command_line_errors(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genflow: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written, not even a run directory


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("broken") / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    return run


# eval and sample: their own config's values and keys, checked before Hydra runs ({run} is
# a run directory that exists)
RUN_COMMAND_LINE = [
    (
        ["eval", "eval.iw_samples=0"],
        "eval.iw_samples=0 is not valid; eval.iw_samples must be a positive integer",
    ),
    (["eval", "split=dev"], "split='dev' is not valid; split must be one of train, val, test"),
    (["eval", "batch_size=0"], "batch_size=0 is not valid; batch_size must be a positive integer"),
    (["eval", "batchsize=10"], "unknown config key 'batchsize'; top-level keys: batch_size"),
    (["sample", "sample.n=0"], "sample.n=0 is not valid; sample.n must be a positive integer"),
    (
        ["sample", "sample.label=-1"],
        "sample.label=-1 is not valid; sample.label must be null or a class index",
    ),
    (
        ["sample", "sample.mode=movie"],
        "sample.mode='movie' is not valid; sample.mode must be one of grid, interpolate",
    ),
    (
        ["sample", "sample.batch_size=0"],
        "sample.batch_size=0 is not valid; sample.batch_size must be a positive integer",
    ),
    (
        ["sample", "sample.seed=abc"],
        "sample.seed='abc' is not valid; sample.seed must be an integer",
    ),
    (
        ["sample", "sample.temperature=0"],
        "sample.temperature=0 is not valid; sample.temperature must be a positive number",
    ),
    (
        ["sample", "sample.steps=1"],
        "sample.steps=1 is not valid; sample.steps must be an integer >= 2",
    ),
    (
        ["sample", "sample.count=3"],
        "unknown config key 'sample.count'; keys under sample: batch_size",
    ),
    (
        ["sample", "checkpoint=../x.pt"],
        "checkpoint='../x.pt' is not valid; checkpoint must be best, last or a file name",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), RUN_COMMAND_LINE, ids=[" ".join(a) for a, _ in RUN_COMMAND_LINE]
)
def test_eval_and_sample_command_line_errors(
    args, message, broken_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in broken_run.rglob("*"))
    assert main([args[0], f"run={broken_run}", *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genflow: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in broken_run.rglob("*")) == before  # nothing written


# Found by the task itself, once the config is known to be well formed.
def _runtime_cases(tmp_path: Path, broken_run: Path):
    yield (
        ["train", *TINY, "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}"],
        "dataset 'mnist' not found under",
    )
    yield ["eval", f"run={broken_run}"], "best.pt is truncated or corrupted and cannot be read"
    if not torch.cuda.is_available():
        yield (
            ["train", *TINY, "device=cuda"],
            "device=cuda was asked for but no CUDA GPU is available",
        )


def test_runtime_errors(tmp_path, broken_run):
    cases = list(_runtime_cases(tmp_path, broken_run))
    before = sorted(p.name for p in broken_run.rglob("*"))
    for args, message in cases:
        proc = run_genflow(args, tmp_path, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in broken_run.rglob("*") if p.suffix != ".log") == [
        p for p in before if not p.endswith(".log")
    ]
    assert len(COMMAND_LINE) + len(RUN_COMMAND_LINE) + len(cases) >= 20


def test_paths_with_non_ascii_letters_or_spaces_pass_through_hydra(tmp_path):
    """A run directory genflow made under such a path can be named back to it: path values
    are quoted for Hydra's override grammar (which takes them only quoted)."""
    from genflow.config import config_dir
    from genflow.preflight import compose_train, quote_paths

    run = tmp_path / "été runs" / "maf-digits"
    assert quote_paths([f"run={run}", "model=maf", "resume='x y'", "seed=3"]) == [
        f"run='{run}'",
        "model=maf",
        "resume='x y'",
        "seed=3",
    ]
    assert compose_train([f"run={run}"], config_dir(), "eval").run == str(run)
    assert compose_train([f"output_root={run}"], config_dir()).output_root == str(run)
