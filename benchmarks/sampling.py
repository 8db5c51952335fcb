"""Autoregressive sampling speed: naive (the whole network once per value) vs cached.

    python benchmarks/sampling.py                  # pixelcnn and wavenet, 28x28, batch 1 and 64
    python benchmarks/sampling.py --models wavenet --batch-sizes 64

Models are built from their default configs for 1x28x28 images with 256 levels (untrained:
speed does not depend on the weights) and sample one full image batch with each sampler, after
checking on a small batch that both samplers give identical images for the same seed.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir

from genflow.config import config_dir
from genflow.tasks.common import build_model


def images_per_second(sampler, batch: int) -> float:
    start = time.perf_counter()
    sampler(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["pixelcnn", "wavenet"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    hardware = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"hardware: {hardware} (torch {torch.__version__}); images 1x28x28, 256 levels")
    print(f"{'model':<9} {'batch':>5} {'naive img/s':>12} {'cached img/s':>13} {'speed-up':>9}")
    for name in args.models:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", [f"model={name}", "dataset=mnist"])
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).eval()
        torch.manual_seed(1)
        check_naive = model.sample_naive(2)
        torch.manual_seed(1)
        assert torch.equal(check_naive, model.sample_cached(2)), "cached and naive samples differ"
        for batch in args.batch_sizes:
            naive = images_per_second(model.sample_naive, batch)
            cached = images_per_second(model.sample_cached, batch)
            print(
                f"{name:<9} {batch:>5} {naive:>12.3f} {cached:>13.3f} {cached / naive:>8.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
