"""genflow beside normflows, nflows and zuko: the same architecture trained the same way.

    python benchmarks/peers.py --models maf                 # MAF: genflow vs normflows, nflows, zuko
    python benchmarks/peers.py --models glow realnvp --steps 1500 --device cuda
    python benchmarks/peers.py --models maf --steps 300 --rounds 3    # a quick look

For each architecture (Glow, multi-scale RealNVP, MAF; sizes in ``ARCHITECTURES``) this builds
genflow's model as ``genflow train model=X dataset=mnist`` composes it (plus the sizes) and each
library's own implementation of the same architecture (benchmarks/baselines.py), checks that
the parameter counts agree within 2%, and trains every side in one process:

- the same data order (batch i of EpochBatches(seed ``--seed``) at step i), the same seed for
  every side's initialisation, batch, optimizer (Adam,
  constant learning rate ``--lr``, no clipping), step budget, and the same uniform
  dequantization noise (the RNG is seeded per step before each side's forward; genflow's
  ``model.dequantization=variational``, which the peers lack, is off) through the same logit
  with genflow's ``model.logit_alpha``;
- in ``--rounds`` alternating rounds of steps/rounds steps each, so a drift in the machine's
  speed hits every side alike; steps/s is total steps over total time, after ``--warmup``
  untimed steps (where torch.compile compiles) from which every side is reset to its start;
- a non-finite loss skips that step's update and is counted.

With ``--ema D ...`` every side also keeps an exponential moving average of its weights per
decay D (genflow's ``trainer.ema``, the same code on every side, outside the timed steps) and
is tested with it too, one more row per side and decay.

genflow runs twice: plain (fp32, eager) and with its fast settings (``--fast``: bf16 autocast
and torch.compile by default). Then every side is evaluated on the full 10k MNIST test split
(fp32, eval mode, the same noise), and a table gives test bpd, the worst example's bpd,
skipped steps, steps/s and genflow's speed ratio to each peer. MNIST is read from
GENFLOW_DATA (or ../shared/data beside the repository).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import BASELINES, to_bpd  # noqa: E402
from flows import data_env, hardware  # noqa: E402
from throughput import SEQUENTIAL_LIMIT, compose, sync  # noqa: E402

# the architectures compared, as genflow overrides on top of `model=X dataset=mnist`
ARCHITECTURES = {
    "maf": [
        "model.num_layers=5",
        "model.hidden_features=1024",
        "model.hidden_layers=1",
        "model.batch_norm=false",
        "model.dequantization=uniform",
    ],
    "glow": [
        "model.num_levels=2",
        "model.steps_per_level=8",
        "model.hidden_channels=64",
        "model.dropout=0",
        "model.dequantization=uniform",
    ],
    "realnvp": [
        "model.num_scales=2",
        "model.io_kernel_size=1",
        "model.activation=relu",
        "model.dropout=0",
        "model.dequantization=uniform",
    ],
}


class Side:
    """One trained model: its per-example bpd of the discrete data (genflow's own, or a
    peer's NLL converted by ``to_bpd``), the forward it trains with, its parameters and
    optimizer, and what its training cost."""

    def __init__(self, name, per_example_bpd, module, precision="fp32", forward=None):
        import torch

        self.name = name
        self.per_example_bpd = per_example_bpd  # x -> (B,) bpd, eval and training alike
        self.module = module
        self.forward = forward or per_example_bpd
        self.precision = precision
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = None
        self.seconds = 0.0
        self.steps = 0
        self.skipped = 0
        self.torch = torch
        self.averages = {}  # decay -> AveragedModel (--ema), updated after each step, untimed

    def make_optimizer(self, lr: float) -> None:
        self.optimizer = self.torch.optim.Adam(self.params, lr=lr)

    def warm_up(self, batches, count: int, lr: float, device) -> None:
        """``count`` untimed steps (torch.compile compiles here), then back to the start:
        the weights as they were and a fresh optimizer, so every side trains the budget."""
        start = {k: v.clone() for k, v in self.module.state_dict().items()}
        self.make_optimizer(lr)
        self.train(batches, 0, count, device)
        self.module.load_state_dict(start)
        self.make_optimizer(lr)
        self.seconds, self.steps, self.skipped = 0.0, 0, 0

    def keep_averages(self, decays) -> None:
        """An EMA of the weights per decay (genflow's ``trainer.ema``, the same code for
        every side), from the weights the timed steps start at."""
        from genflow.engine.ema import build_ema

        self.averages = {d: build_ema(self.module, d) for d in decays}

    def train(self, batches, first: int, count: int, device, seed: int = 0) -> None:
        torch = self.torch
        from genflow.engine.ema import update_ema
        from genflow.engine.precision import autocast

        self.module.train()
        sync(device)
        start = time.perf_counter()
        untimed = 0.0  # the EMA updates
        for i in range(first, first + count):
            torch.manual_seed(1_000_003 * (i + 1) + seed)  # the same noise for every side at step i
            x = batches(i)
            with autocast(self.precision, device):
                loss = self.forward(x).float().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if torch.isfinite(loss):  # one sync per step on every side alike
                self.optimizer.step()
            else:
                self.skipped += 1
            if self.averages:
                untimed -= time.perf_counter()
                for average in self.averages.values():
                    update_ema(average, self.module)
                untimed += time.perf_counter()
        sync(device)
        self.seconds += time.perf_counter() - start - untimed
        self.steps += count

    def evaluate(self, data, batch_size: int) -> tuple[float, float]:
        """Mean and maximum per-example bpd over ``data`` (fp32, eval mode, fixed noise)."""
        torch = self.torch
        self.module.eval()
        values = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for start in range(0, len(data), batch_size):
                values.append(self.per_example_bpd(data[start : start + batch_size]).double())
        values = torch.cat(values)
        bad = ~torch.isfinite(values)
        return float(values.mean()), float(values.max()) if not bad.any() else math.inf

    def evaluate_average(self, decay: float, data, batch_size: int) -> tuple[float, float]:
        """``evaluate`` with the EMA's weights in the module, then the trained ones back."""
        trained = {k: v.clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.averages[decay].module.state_dict())
        try:
            return self.evaluate(data, batch_size)
        finally:
            self.module.load_state_dict(trained)


def build_sides(name: str, cfg, batches, args, device) -> list[Side]:
    import torch

    from genflow.tasks.common import build_model

    sides = []
    torch.manual_seed(args.seed)
    plain = build_model(cfg.model).to(device)
    plain.initialize(batches(0))
    state = {k: v.clone() for k, v in plain.state_dict().items()}

    def genflow_bpd(model):
        return lambda x: model.bpd(-model.log_prob(x))

    sides.append(Side("genflow", genflow_bpd(plain), plain))
    if args.fast:
        fast = build_model(cfg.model).to(device)
        fast.load_state_dict(state)  # the same start as the plain side
        # the training objective through forward (what torch.compile compiles): mean bpd
        trained = torch.compile(fast) if "compile" in args.fast else fast
        forward = lambda x: trained(x).loss  # noqa: E731
        precision = "bf16" if "bf16" in args.fast else "fp32"
        sides.append(
            Side(f"genflow {'+'.join(args.fast)}", genflow_bpd(fast), fast, precision, forward)
        )
    num_dims = math.prod(cfg.dataset.shape)
    for library, build in BASELINES[name]:
        if library not in args.peers:
            continue
        if (name, library) == ("maf", "normflows") and num_dims > SEQUENTIAL_LIMIT:
            print(f"{name}: {library} skipped: its log-prob is {num_dims} sequential passes")
            continue
        torch.manual_seed(args.seed)
        nll, module = build(cfg)
        module = module.to(device)
        with torch.no_grad():
            nll(batches(0))  # data-dependent initialisation (ActNorm)
        sides.append(Side(library, lambda x, nll=nll: to_bpd(nll(x), cfg), module))
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--peers", nargs="+", default=["normflows", "nflows", "zuko"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fast", nargs="*", default=["bf16", "compile"], help="bf16 compile")
    parser.add_argument("--set", nargs="*", default=[], help="more genflow overrides")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps, then reset")
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--seed", type=int, default=0, help="initialisation, data order and noise (all sides)"
    )
    parser.add_argument(
        "--ema",
        nargs="*",
        type=float,
        default=[],
        help="also test every side with an EMA of its weights at these decays (untimed)",
    )
    args = parser.parse_args()

    data_env()
    import torch

    from genflow.data import EpochBatches, load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"hardware: {hardware(args.device)}; batch {args.batch_size}, Adam {args.lr:g}, "
        f"seed {args.seed}"
    )
    header = (
        f"{'model':<8} {'library':<30} {'params':>9} {'test bpd':>9} {'worst':>8} "
        f"{'skipped':>7} {'steps/s':>8} {'genflow/this':>12} {'fast/this':>10}"
    )
    splits = None
    for name in args.models:
        torch._dynamo.reset()
        cfg = compose(name, "mnist", ARCHITECTURES[name] + args.set)
        if splits is None:
            splits = load_dataset(cfg.dataset).to(device)
        batches = EpochBatches(splits.train, args.batch_size, seed=args.seed)
        sides = build_sides(name, cfg, batches, args, device)
        counts = [sum(p.numel() for p in side.params) for side in sides]
        for side, count in zip(sides, counts, strict=True):
            if abs(count - counts[0]) > 0.02 * counts[0]:
                print(f"{name}: {side.name} has {count} parameters, genflow {counts[0]} (> 2%)")
        for side in sides:
            side.warm_up(batches, args.warmup, args.lr, device)
            side.keep_averages(args.ema)
        per_round = max(1, args.steps // args.rounds)
        done = 0
        while done < args.steps:
            count = min(per_round, args.steps - done)
            for side in sides:
                side.train(batches, done, count, device, args.seed)
            done += count
            print(f"{name}: {done}/{args.steps} steps", flush=True)
        results = [side.evaluate(splits.test, args.eval_batch_size) for side in sides]
        print(header)
        print("-" * len(header))
        speeds = [side.steps / side.seconds for side in sides]
        fast = 1 if args.fast else None
        for k, (side, count, (bpd, worst)) in enumerate(zip(sides, counts, results, strict=True)):
            row = (
                f"{name:<8} {side.name:<30} {count:>9} {_figure(bpd, 4):>9} "
                f"{_figure(worst, 2):>8} {side.skipped:>7} {speeds[k]:>8.2f}"
            )
            if not side.name.startswith("genflow"):
                row += f" {speeds[0] / speeds[k]:>11.2f}x"
                if fast is not None:
                    row += f" {speeds[fast] / speeds[k]:>9.2f}x"
            print(row, flush=True)
        for decay in args.ema:
            for side, count in zip(sides, counts, strict=True):
                bpd, worst = side.evaluate_average(decay, splits.test, args.eval_batch_size)
                label = f"{side.name} EMA {decay:g}"
                print(
                    f"{name:<8} {label:<30} {count:>9} {_figure(bpd, 4):>9} {_figure(worst, 2):>8}"
                )


def _figure(value: float, decimals: int) -> str:
    """Fixed point for ordinary bpd, exponent notation for a diverged model's."""
    return f"{value:.{decimals}f}" if abs(value) < 1e4 else f"{value:.3g}"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
