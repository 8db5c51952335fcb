"""Training throughput: steps/s, examples/s and peak memory per model, precision and compile.

    python benchmarks/throughput.py                          # every model, digits and mnist, fp32 and bf16, eager
    python benchmarks/throughput.py --models glow maf --compile both --precisions fp32 bf16
    python benchmarks/throughput.py --compare                # genflow vs normflows / zuko (bench extra)

Grid mode runs each (model, dataset, precision, compile) in a fresh subprocess with the model's
default config (as ``genflow train model=X dataset=Y`` builds it), times ``--steps`` training
steps (forward in autocast, backward, Adam) after warm-up steps (where torch.compile
compiles), and reports peak memory of that process alone: peak RSS on the CPU,
torch.cuda.max_memory_allocated on a GPU.

Compare mode builds genflow's Glow, RealNVP and MAF and the same architectures from normflows
(and MAF from zuko) in one process, with the same batch, the same data and the same number of
threads, and times them in alternating rounds (the median round counts), so drift in the
machine's speed hits both sides alike. Dropout and batch norm are off on genflow's side,
since the baselines have none. Both sides compute the same loss: the NLL of uniformly
dequantized data through a logit with genflow's model.logit_alpha, Jacobian included; the first-step bpd
of each side is printed as a check. MNIST is read from GENFLOW_DATA (or ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import data_env, hardware, run_measurement  # noqa: E402

MODELS = ["realnvp", "nice", "maf", "glow", "pixelcnn", "pixelcnnpp", "wavenet", "vae"]
STEPS = {"digits": 30, "mnist": 10}
# normflows' MaskedAffineAutoregressive evaluates log-prob in its sequential direction (one
# MADE pass per dimension): beyond this many dimensions it takes minutes and gigabytes a step
SEQUENTIAL_LIMIT = 256
# the baselines have no dropout, no batch norm and uniform dequantization: genflow's side
# matches them
COMPARABLE = {
    "glow": ["model.dropout=0", "model.dequantization=uniform"],
    "realnvp": ["model.dropout=0", "model.dequantization=uniform"],
    "maf": ["model.batch_norm=false", "model.dequantization=uniform"],
}


def compose(model: str, dataset: str, extra: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from genflow.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("train", [f"model={model}", f"dataset={dataset}", *(extra or [])])


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(
    loss_fn, optimizer, batches, first: int, count: int, precision: str, device
) -> float:
    """Seconds for ``count`` training steps from batch ``first`` (autocast, backward, step)."""
    from genflow.engine.precision import autocast

    sync(device)
    start = time.perf_counter()
    for i in range(first, first + count):
        with autocast(precision, device):
            loss = loss_fn(batches(i))
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


# -- grid -------------------------------------------------------------------------------------
def run_one(model_name: str, dataset: str, precision: str, compiled: bool, args) -> dict:
    import torch

    from genflow.data import EpochBatches, load_dataset
    from genflow.tasks.common import build_model

    device = torch.device(args.device)
    cfg = compose(model_name, dataset)
    torch.manual_seed(0)
    splits = load_dataset(cfg.dataset).to(device)
    model = build_model(cfg.model).to(device)
    batches = EpochBatches(splits.train, args.batch_size, seed=0)
    model.initialize(batches(0))
    forward = torch.compile(model) if compiled else model
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = args.warmup + (3 if compiled else 0)
    timed_steps(lambda x: forward(x).loss, optimizer, batches, 0, warmup, precision, device)
    steps = args.steps or STEPS.get(dataset, 10)
    elapsed = timed_steps(
        lambda x: forward(x).loss, optimizer, batches, warmup, steps, precision, device
    )
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "steps_per_sec": steps / elapsed,
        "examples_per_sec": steps * args.batch_size / elapsed,
        "peak_memory_mb": peak_mb,
        "params_m": sum(p.numel() for p in params) / 1e6,
    }


def grid(args, env: dict) -> None:
    header = (
        f"{'model':<10} {'dataset':<7} {'prec':<5} {'mode':<7} {'params(M)':>9} "
        f"{'steps/s':>8} {'ex/s':>8} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for dataset in args.datasets:
        for model in args.models:
            for precision in args.precisions:
                for compiled in modes:
                    cmd = [sys.executable, __file__, "--one", model, dataset, precision]
                    cmd += ["--compiled" if compiled else "--eager", *_passthrough(args)]
                    r = run_measurement(cmd, env)
                    mode = "compile" if compiled else "eager"
                    row = f"{model:<10} {dataset:<7} {precision:<5} {mode:<7}"
                    if isinstance(r, str):
                        print(f"{row} failed: {r}", flush=True)
                        continue
                    print(
                        f"{row} {r['params_m']:>9.2f} {r['steps_per_sec']:>8.2f} "
                        f"{r['examples_per_sec']:>8.0f} {r['peak_memory_mb']:>8.0f}",
                        flush=True,
                    )


def _passthrough(args) -> list[str]:
    out = ["--batch-size", str(args.batch_size), "--device", args.device]
    out += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    return out + (["--steps", str(args.steps)] if args.steps else [])


# -- compare ----------------------------------------------------------------------------------
def compare(args) -> None:
    import torch
    from baselines import BASELINES

    from genflow.data import EpochBatches, load_dataset
    from genflow.tasks.common import build_model

    device = torch.device(args.device)
    header = (
        f"{'model':<8} {'dataset':<7} {'library':<16} {'params':>9} {'bpd@0':>7} "
        f"{'steps/s':>8} {'genflow/this':>12}"
        + (f" {'compiled/this':>13}" if args.compiled else "")
    )
    print(header)
    print("-" * len(header))
    for dataset in args.datasets:
        splits = None
        for name in [m for m in args.models if m in BASELINES]:
            torch._dynamo.reset()  # compiled code is per model: no recompile limit across them
            cfg = compose(name, dataset, COMPARABLE.get(name))
            if splits is None:
                splits = load_dataset(cfg.dataset).to(device)
            batches = EpochBatches(splits.train, args.batch_size, seed=0)
            num_dims = math.prod(cfg.dataset.shape)
            shift = math.log(cfg.dataset.levels)  # nats of [0, 1) data -> nats of the levels

            sides: list[tuple[str, object, list, object]] = []
            torch.manual_seed(0)
            model = build_model(cfg.model).to(device)
            model.initialize(batches(0))
            sides.append(("genflow", lambda x, m=model: m(x).loss, list(model.parameters()), None))
            if args.compiled:
                compiled = torch.compile(model)
                sides.append(
                    ("genflow compile", lambda x, m=compiled: m(x).loss, sides[0][2], None)
                )
            for library, build in BASELINES[name]:
                if (name, library) == ("maf", "normflows") and num_dims > SEQUENTIAL_LIMIT:
                    print(
                        f"{name:<8} {dataset:<7} {library:<16} skipped: its log-prob takes "
                        f"{num_dims} sequential MADE passes per layer",
                        flush=True,
                    )
                    continue
                torch.manual_seed(0)
                nll, module = build(cfg)
                module = module.to(device)
                with torch.no_grad():
                    nll(batches(0))  # data-dependent init (normflows' ActNorm)
                loss = lambda x, nll=nll: nll(x).mean()  # noqa: E731
                sides.append((library, loss, list(module.parameters()), (num_dims, shift)))

            first_bpd = []
            for _, loss_fn, _, to_bpd in sides:
                with torch.no_grad():
                    torch.manual_seed(1)
                    value = float(loss_fn(batches(1)))
                if to_bpd is not None:  # nats of [0, 1) data -> bits per dim of the levels
                    num_dims, shift = to_bpd
                    value = (value / num_dims + shift) / math.log(2)
                first_bpd.append(value)
            optimizers = [torch.optim.Adam(params, lr=1e-4) for _, _, params, _ in sides]
            for (_, loss_fn, _, _), opt in zip(sides, optimizers, strict=True):  # and compile
                timed_steps(loss_fn, opt, batches, 0, args.warmup + 3, "fp32", device)
            steps = args.steps or STEPS.get(dataset, 10)
            rounds: list[list[float]] = [[] for _ in sides]
            for r in range(args.rounds):
                for k, (_, loss_fn, _, _) in enumerate(sides):
                    elapsed = timed_steps(
                        loss_fn, optimizers[k], batches, 10 + r * steps, steps, "fp32", device
                    )
                    rounds[k].append(steps / elapsed)
            speeds = [statistics.median(r) for r in rounds]
            ours = 2 if args.compiled else 1  # genflow's rows come first
            for k, (library, _, params, _) in enumerate(sides):
                count = sum(p.numel() for p in params)
                row = (
                    f"{name:<8} {dataset:<7} {library:<16} {count:>9} {first_bpd[k]:>7.3f} "
                    f"{speeds[k]:>8.2f}"
                )
                if k >= ours:
                    row += f" {speeds[0] / speeds[k]:>11.2f}x"
                    if args.compiled:
                        row += f" {speeds[1] / speeds[k]:>12.2f}x"
                print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (30 digits, 10 mnist)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--compare", action="store_true", help="genflow vs normflows and zuko")
    parser.add_argument("--compiled", action="store_true", help="--compare: add genflow compiled")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: alternating rounds")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        model, dataset, precision = args.one
        print(json.dumps(run_one(model, dataset, precision, not args.eager, args)))
        return
    env = data_env()
    print(f"hardware: {hardware(args.device)}; batch {args.batch_size}")
    if args.compare:
        args.models = args.models or ["glow", "realnvp", "maf"]
        compare(args)
    else:
        args.models = args.models or MODELS
        grid(args, env)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
