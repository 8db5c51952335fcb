"""Flow baseline: steps/s, peak memory and bpd after a fixed step budget, per model and dataset.

    python benchmarks/flows.py                       # nice, realnvp, maf, glow on digits and mnist
    python benchmarks/flows.py --models glow --datasets digits --steps 500

Each (model, dataset) runs in a fresh subprocess with the model's default config (as
`genflow train model=X dataset=Y` would build it), so peak memory is that run's alone: peak
RSS on the CPU, torch.cuda.max_memory_allocated on a GPU. Steps/s is measured after 5 warm-up
steps; bpd is the full validation split after the budget. MNIST is read from GENFLOW_DATA
(or ../shared/data beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STEPS = {"digits": 300, "mnist": 100}


def run_one(model_name: str, dataset: str, steps: int, batch_size: int, device_name: str) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from genflow.config import config_dir
    from genflow.data import EpochBatches, load_dataset
    from genflow.engine.evaluate import evaluate
    from genflow.engine.optim import build_optimizer
    from genflow.tasks.common import build_model

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", [f"model={model_name}", f"dataset={dataset}"])
    torch.manual_seed(0)
    device = torch.device(device_name)
    splits = load_dataset(cfg.dataset).to(device)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    batches = EpochBatches(splits.train, batch_size, seed=0)
    model.initialize(batches(0))
    warmup = 5

    def step(i: int) -> None:
        loss = model(batches(i)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(warmup, steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    metrics = evaluate(model, splits.val, 500)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name,
        "dataset": dataset,
        "steps": steps,
        "batch_size": batch_size,
        "steps_per_sec": (steps - warmup) / elapsed,
        "examples_per_sec": (steps - warmup) * batch_size / elapsed,
        "peak_memory_mb": peak_mb,
        "val_bpd": metrics["bpd"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def hardware(device_name: str) -> str:
    import torch

    if device_name == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, {os.cpu_count()} cores (torch {torch.__version__})"


def data_env() -> dict:
    """The environment for a benchmark and its subprocesses: GENFLOW_DATA defaults to
    ../shared/data beside the repository when that exists (set in this process too)."""
    shared = REPO.parent / "shared" / "data"
    if "GENFLOW_DATA" not in os.environ and shared.is_dir():
        os.environ["GENFLOW_DATA"] = str(shared)
    return dict(os.environ)


def run_measurement(cmd: list[str], env: dict) -> dict | str:
    """Run one measurement in its own process (so peak memory is its own): the JSON object
    it prints last, or the last line of its error output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["nice", "realnvp", "maf", "glow"])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"])
    parser.add_argument(
        "--steps", type=int, default=None, help="step budget (default: 300 digits, 100 mnist)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.batch_size, args.device)))
        return
    env = data_env()
    print(f"hardware: {hardware(args.device)}")
    header = f"{'model':<8} {'dataset':<7} {'steps':>5} {'params(M)':>9} {'steps/s':>8} {'ex/s':>8} {'peak MB':>8} {'val bpd':>8}"
    print(header)
    print("-" * len(header))
    for dataset in args.datasets:
        for model in args.models:
            steps = args.steps or DEFAULT_STEPS.get(dataset, 100)
            cmd = [
                sys.executable,
                __file__,
                "--one",
                model,
                dataset,
                "--steps",
                str(steps),
                "--batch-size",
                str(args.batch_size),
                "--device",
                args.device,
            ]
            r = run_measurement(cmd, env)
            if isinstance(r, str):
                print(f"{model:<8} {dataset:<7} failed: {r}")
                continue
            print(
                f"{model:<8} {dataset:<7} {steps:>5} {r['params_m']:>9.2f} {r['steps_per_sec']:>8.2f} "
                f"{r['examples_per_sec']:>8.0f} {r['peak_memory_mb']:>8.0f} {r['val_bpd']:>8.3f}",
                flush=True,
            )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
