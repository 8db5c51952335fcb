"""Shared test helpers: the bijection harness lives in test_bijections.py; these run the CLI
or compose configs in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
MNIST_ROOT = REPO.parent / "shared" / "data"


def compose_config(overrides: list[str], name: str = "train"):
    """The config ``genflow <name> <overrides>`` composes, in this process."""
    from genflow.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


def perturbed(module, std: float):
    """Add fixed-seed noise of ``std`` to every parameter: zero-initialised last layers make
    couplings and autoregressive nets trivial, and the tests need real maps."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


# A run short enough that the CLI takes a second or two of training on 2 cores ...
RUN_TINY = [
    "trainer.max_steps=20",
    "trainer.eval_every=10",
    "trainer.ckpt_every=10",
    "trainer.sample_every=20",
    "trainer.sample_n=16",
    "trainer.batch_size=32",
    "trainer.log_every=5",
    "trainer.progress_bar=false",
    "logger=none",
    "device=cpu",
]
# ... and small models: TINY is the default model (RealNVP) at that size. The flows keep their
# default variational dequantization, with a small dequantizer (the default 32 x 4 one costs
# more than the tiny flow).
SMALL_DEQUANTIZER = ["model.dequantizer_hidden=8", "model.dequantizer_couplings=1"]
MODEL_TINY = {
    "realnvp": ["model.hidden_channels=8", "model.num_blocks=1", *SMALL_DEQUANTIZER],
    "nice": ["model.hidden_features=32", "model.hidden_layers=1", *SMALL_DEQUANTIZER],
    "maf": ["model.hidden_features=32", "model.num_layers=2", *SMALL_DEQUANTIZER],
    "nsf": [
        "model.hidden_channels=8",
        "model.steps_per_level=1",
        "model.hidden_features=16",
        *SMALL_DEQUANTIZER,
    ],
    "glow": ["model.hidden_channels=8", "model.steps_per_level=2", *SMALL_DEQUANTIZER],
    "pixelcnn": ["model.hidden_channels=8", "model.num_layers=2"],
    "wavenet": ["model.residual_channels=8", "model.skip_channels=8", "model.layers_per_block=3"],
    "pixelcnnpp": ["model.hidden_channels=8", "model.num_resnet=1", "model.num_mixtures=2"],
    "pixelrnn": ["model.hidden_channels=4", "model.num_layers=1"],
    "gated_pixelcnn": ["model.hidden_channels=6", "model.num_layers=2"],
    "vae": ["model.hidden_features=16", "model.latent_features=4", "eval.iw_samples=8"],
    "hvae": ["model.hidden_features=16", "model.latent_features=3", "eval.iw_samples=8"],
    "vqvae": [
        "model.hidden_channels=8",
        "model.num_blocks=1",
        "model.num_codes=8",
        "model.code_dim=4",
        "model.prior_hidden_channels=8",
        "model.prior_layers=2",
    ],
    "cnf": [
        "model.hidden_features=16",
        "model.num_layers=1",
        *(f"model.{s}.{o}" for s in ("solver", "sample_solver") for o in ("method=rk4", "steps=4")),
    ],
}
TINY = [*MODEL_TINY["realnvp"], *RUN_TINY]


def genflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1"
    )
    env.setdefault("GENFLOW_DATA", str(MNIST_ROOT))
    return env


def run_genflow(
    args: list[str], cwd: Path, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "genflow", *args],
        cwd=cwd,
        env=genflow_env(),
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"genflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in root.glob("outputs/**/.hydra/config.yaml"))


def read_records(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def wandb_records(path: Path):
    """The records of an offline W&B run's ``run-<id>.wandb`` file, parsed with W&B's own
    protobuf messages. The file is a LevelDB-style log after a 7-byte header: 32 KiB blocks of
    chunks, each a CRC (4 bytes), a length (2, little-endian), a type (full, first, middle,
    last) and the payload; W&B 0.31 ships no reader of its own."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding to the end of the block
            pos += (block - pos % block) % block
            continue
        chunk = payload if kind in (1, 2) else chunk + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
