"""How much of each flow's probability mass lies on the data box, and the test NLL beside it.

    python benchmarks/mass.py                                  # nice, realnvp, maf, glow on digits
    python benchmarks/mass.py --dataset mnist --steps 1500
    python benchmarks/mass.py --set model.logit_alpha=1e-6     # extra overrides for every run
    python benchmarks/mass.py --runs outputs/maf-digits/2026-...  # measure existing runs only

A flow on dequantized data models a density on R^D; an image is a bin of the data box
[0, 1)^D. Mass the flow puts outside the box belongs to no image, so its reported NLL is
looser than it could be. For each flow this trains the default config (`genflow train
model=X dataset=Y`, in a fresh process, under a temporary folder), then draws ``--samples``
samples from the best checkpoint and reports the share whose continuous value (before the
floor to levels) is inside the box, with the run's test NLL, bpd, and the median and worst
per-example bpd.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import data_env, hardware  # noqa: E402

FLOWS = ("nice", "realnvp", "maf", "glow")


def train(model: str, args, root: Path, env: dict) -> Path:
    run_dir = root / f"{model}-{args.dataset}"
    command = [sys.executable, "-m", "genflow", "train", f"model={model}"]
    command += [f"dataset={args.dataset}", "logger=none", "trainer.sample_every=0"]
    command += ["trainer.progress_bar=false", f"seed={args.seed}", f"hydra.run.dir={run_dir}"]
    if args.steps:
        command.append(f"trainer.max_steps={args.steps}")
    command += args.set
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{model}: training failed: {tail}")
    return run_dir


def measure(run_dir: Path, samples: int) -> dict:
    import torch

    from genflow.engine.run_dir import RunDir
    from genflow.tasks.common import load_model_from_checkpoint

    checkpoint = RunDir(run_dir).find_checkpoint("best")
    model, ckpt = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    torch.manual_seed(0)
    summary = json.loads((run_dir / "eval.json").read_text())
    return {
        "model": ckpt["config"]["model"]["_target_"].rsplit(".", 1)[-1],
        "alpha": ckpt["config"]["model"].get("logit_alpha"),
        "dequantization": ckpt["config"]["model"].get("dequantization", "uniform"),
        "step": summary["step"],
        "nll": summary["nll"],
        "bpd": summary["bpd"],
        "bpd_median": summary.get("bpd_median", float("nan")),
        "bpd_max": summary.get("bpd_max", float("nan")),
        "box_mass": model.data_box_mass(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--runs", nargs="*", type=Path, help="measure these run directories")
    args = parser.parse_args()

    env = dict(data_env(), WANDB_MODE="offline", WANDB_SILENT="true")
    print(f"hardware: {hardware('cpu')}; {args.samples} samples each", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or []
        if not runs:
            for model in args.models:
                start = time.perf_counter()
                runs.append(train(model, args, Path(tmp), env))
                print(f"{model}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        for run_dir in runs:
            rows.append(measure(run_dir, args.samples))
    print(f"dataset {args.dataset}, overrides: {' '.join(args.set) or '(defaults)'}")
    header = (
        f"{'model':8} {'alpha':>8} {'dequant':>11} {'step':>6} {'test nll':>9} {'bpd':>7} "
        f"{'median':>7} {'worst bpd':>10} {'in box':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        alpha = "none" if r["alpha"] is None else f"{r['alpha']:g}"
        print(
            f"{r['model']:8} {alpha:>8} {r['dequantization']:>11} {r['step']:>6} {r['nll']:>9.2f} "
            f"{r['bpd']:>7.3f} {r['bpd_median']:>7.3f} {r['bpd_max']:>10.2f} "
            f"{100 * r['box_mass']:>6.1f}%"
        )


if __name__ == "__main__":
    main()
