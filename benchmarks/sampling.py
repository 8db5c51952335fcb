"""Autoregressive sampling speed: naive (the whole network once per value) vs cached.

    python benchmarks/sampling.py                  # every ARM, 28x28, batch 1, 64 and 256
    python benchmarks/sampling.py --models wavenet --batch-sizes 64
    python benchmarks/sampling.py --naive-positions 32   # time naive on 32 of the 784 values

Models are built from their default configs for 1x28x28 images with 256 levels (untrained:
speed does not depend on the weights) and sample one full image batch with each sampler, after
checking on a small batch that both samplers give identical images for the same seed.

A naive draw costs one full network pass per value, the same pass at every value, so with
``--naive-positions K`` the naive sampler is timed on its first K values and its images/s
extrapolated to all of them (the table says which); the cached samplers are always timed on
whole images.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from hydra import compose, initialize_config_dir

from genflow.config import config_dir
from genflow.engine.device import describe_hardware
from genflow.tasks.common import build_model


def images_per_second(sampler, batch: int) -> float:
    start = time.perf_counter()
    sampler(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - start)


ARMS = ["pixelcnn", "gated_pixelcnn", "pixelrnn", "wavenet", "pixelcnnpp"]


def naive_images_per_second(model, batch: int, positions: int | None) -> tuple[float, str]:
    """The naive sampler's images/s, over all values or over the first ``positions`` of them
    (extrapolated: each value is one full pass of the same cost)."""
    total = sum(1 for _ in model.positions())
    if positions is None or positions >= total:
        return images_per_second(model.sample_naive, batch), "all"
    every = model.positions
    model.positions = lambda: itertools.islice(every(), positions)
    try:
        partial = images_per_second(model.sample_naive, batch)
    finally:
        del model.positions  # back to the class's method
    return partial * positions / total, f"{positions}/{total}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument(
        "--naive-positions",
        type=int,
        default=None,
        help="time the naive sampler on this many values and extrapolate (default: all)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    hardware = describe_hardware(device)
    print(f"hardware: {hardware}; images 1x28x28, 256 levels")
    print(
        f"{'model':<15} {'batch':>5} {'naive img/s':>12} {'naive timed on':>14} "
        f"{'cached img/s':>13} {'speed-up':>9}"
    )
    for name in args.models:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", [f"model={name}", "dataset=mnist"])
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).eval()
        cached_sampler = getattr(model, "sample_cached", None)
        if cached_sampler is not None:
            torch.manual_seed(1)
            check_naive = model.sample_naive(2)
            torch.manual_seed(1)
            assert torch.equal(check_naive, cached_sampler(2)), "cached and naive samples differ"
        for batch in args.batch_sizes:
            naive, timed_on = naive_images_per_second(model, batch, args.naive_positions)
            if cached_sampler is None:
                cached_text, ratio_text = f"{'-':>13}", f"{'-':>9}"
            else:
                cached = images_per_second(cached_sampler, batch)
                cached_text, ratio_text = f"{cached:>13.3f}", f"{cached / naive:>8.1f}x"
            print(
                f"{name:<15} {batch:>5} {naive:>12.3f} {timed_on:>14} {cached_text} {ratio_text}",
                flush=True,
            )


if __name__ == "__main__":
    main()
