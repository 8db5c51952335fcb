"""genflow beside normflows, nflows and zuko: the same architecture trained the same way.

    python benchmarks/peers.py --models maf                 # MAF: genflow vs normflows, nflows, zuko
    python benchmarks/peers.py --models glow realnvp --steps 1500 --device cuda
    python benchmarks/peers.py --models nsf-table nsf-ar-table maf-sbi nsf-sbi nsf-mnist
    python benchmarks/peers.py --models maf --steps 300 --rounds 3    # a quick look

Each comparison (``COMPARISONS``: an architecture, its sizes and a dataset) builds genflow's
model as ``genflow train model=X dataset=Y`` composes it (plus the sizes) and each library's
own implementation of the same architecture (benchmarks/baselines.py), checks that the
parameter counts agree within 2% (zuko's masked-MLP conditioners get the hidden width that
gives them genflow's count), and trains every side in one process:

- the same data order (batch i of EpochBatches(seed ``--seed``) at step i, with its contexts
  for a conditional density), the same seed for every side's initialisation, batch, optimizer
  (Adam, constant learning rate ``--lr``, no clipping), step budget (genflow steps Adam as its
  trainer does, with torch's fused kernel on CPU and CUDA, the same update; the peers with
  torch.optim.Adam's default step, as their documentation shows, or with ``--peer-optimizer
  fused`` the fused one too); on images the same
  uniform dequantization noise (the RNG is seeded per step before each side's forward;
  genflow's ``model.dequantization=variational``, which the peers lack, is off) through the
  same logit with genflow's ``model.logit_alpha``; on vectors the same standardisation (the
  training split's mean and standard deviation, inside genflow's model, in front of each
  peer's flow, its log-det counted on every side) for the data and the context;
- in ``--rounds`` alternating rounds of steps/rounds steps each, so a drift in the machine's
  speed hits every side alike; steps/s is total steps over total time, after ``--warmup``
  untimed steps (where torch.compile compiles) from which every side is reset to its start;
- a non-finite loss skips that step's update and is counted.

With ``--ema D ...`` every side also keeps an exponential moving average of its weights per
decay D (genflow's ``trainer.ema``, the same code on every side, outside the timed steps) and
is tested with it too, one more row per side and decay.

genflow runs twice: plain (fp32, eager) and with its fast settings (``--fast``: bf16 autocast
and torch.compile by default; each comparison may name its own). Then every side is evaluated
on the whole test split (fp32, eval mode, the same noise): test bpd on images, test NLL in
nats of the data as stored on vectors, the worst example's, skipped steps, steps/s and
genflow's speed ratio to each peer; on an SBI task also the C2ST of each side's posterior
samples against the task's exact reference posteriors (0.5 is perfect). MNIST is read from
GENFLOW_DATA (or ../shared/data beside the repository).
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import BASELINES, VECTOR_BASELINES, to_bpd, zuko_hidden  # noqa: E402
from flows import data_env, hardware  # noqa: E402
from throughput import SEQUENTIAL_LIMIT, compose, sync  # noqa: E402


@dataclass
class Comparison:
    model: str
    dataset: str
    overrides: list[str]
    steps: int = 1500  # the default budget (``--steps`` overrides)
    fast: list[str] | None = None  # genflow's fast settings here (``--fast`` overrides)
    peers: list[str] = field(default_factory=lambda: ["normflows", "nflows", "zuko"])


# vectors and splines: torch.compile in fp32 (bf16 rounds the spline's bin search and slopes)
COMPILE = ["compile"]
IMAGE_FLOW = ["model.dropout=0", "model.dequantization=uniform"]
# the paper's tabular NSF at genflow's defaults (5 layers, 128 hidden, 8 bins, tail bound 3)
NSF_VECTOR = ["model.dropout=0", "model.batch_norm=false"]
COMPARISONS = {
    "maf": Comparison(
        "maf",
        "mnist",
        [
            "model.num_layers=5",
            "model.hidden_features=1024",
            "model.hidden_layers=1",
            "model.batch_norm=false",
            "model.dequantization=uniform",
        ],
    ),
    "glow": Comparison(
        "glow",
        "mnist",
        ["model.num_levels=2", "model.steps_per_level=8", "model.hidden_channels=64", *IMAGE_FLOW],
    ),
    "realnvp": Comparison(
        "realnvp",
        "mnist",
        ["model.num_scales=2", "model.io_kernel_size=1", "model.activation=relu", *IMAGE_FLOW],
    ),
    # spline couplings / MADE splines on a real table (scikit-learn's breast cancer, 30-D)
    "nsf-table": Comparison(
        "nsf", "breast_cancer", ["model.kind=coupling", *NSF_VECTOR], steps=500, fast=COMPILE
    ),
    "nsf-ar-table": Comparison(
        "nsf",
        "breast_cancer",
        ["model.kind=autoregressive", *NSF_VECTOR],
        steps=500,
        fast=COMPILE,
    ),
    # conditional densities: the posterior p(theta | x) of the SBI benchmark's two moons
    "maf-sbi": Comparison(
        "maf",
        "sbi_two_moons",
        ["model.hidden_features=128", "model.batch_norm=false"],
        steps=2000,
        fast=COMPILE,
        peers=["nflows", "zuko"],
    ),
    "nsf-sbi": Comparison(
        "nsf", "sbi_two_moons", ["model.kind=coupling", *NSF_VECTOR], steps=2000, fast=COMPILE
    ),
    # MADE splines on MNIST's flattened pixels, in logit space (reverse orders, no LU: 784-D)
    "nsf-mnist": Comparison(
        "nsf",
        "mnist",
        [
            "model.kind=autoregressive",
            "model.num_layers=2",
            "model.hidden_features=256",
            "model.hidden_layers=1",
            "model.linear=none",
            "model.tail_bound=8",
            *IMAGE_FLOW,
        ],
        steps=1000,
        fast=COMPILE,
    ),
}


class Side:
    """One trained model: its per-example test figure (genflow's own bpd or NLL, or a peer's
    NLL on the same footing), the forward it trains with, a sampler (for C2ST), its parameters
    and optimizer, and what its training cost. Every function takes a batch and its contexts
    (None without)."""

    def __init__(
        self,
        name,
        per_example,
        module,
        precision="fp32",
        forward=None,
        sample=None,
        fused=False,
    ):
        import torch

        self.name = name
        self.per_example = per_example  # (x, c) -> (B,), eval and training alike
        self.module = module
        self.forward = forward or per_example
        self.sample = sample  # (n, one context c or None) -> (n, D) in data units
        self.precision = precision
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = None
        self.fused = fused  # Adam's fused step (genflow's trainer: optimizer.fused=auto)
        self.seconds = 0.0
        self.steps = 0
        self.skipped = 0
        self.torch = torch
        self.averages = {}  # decay -> AveragedModel (--ema), updated after each step, untimed

    def make_optimizer(self, lr: float) -> None:
        options = {"fused": True} if self.fused else {}
        self.optimizer = self.torch.optim.Adam(self.params, lr=lr, **options)

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
            x, c = batches.labeled(i)
            with autocast(self.precision, device):
                loss = self.forward(x, c).float().mean()
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

    def evaluate(self, data, context, batch_size: int) -> tuple[float, float]:
        """Mean and maximum of the per-example figure over ``data`` (fp32, eval mode, fixed
        noise)."""
        torch = self.torch
        self.module.eval()
        values = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for start in range(0, len(data), batch_size):
                c = None if context is None else context[start : start + batch_size]
                values.append(self.per_example(data[start : start + batch_size], c).double())
        values = torch.cat(values)
        bad = ~torch.isfinite(values)
        return float(values.mean()), float(values.max()) if not bad.any() else math.inf

    def posterior_c2st(self, references, seed: int = 0) -> float:
        """Mean C2ST of this side's samples given each reference observation against the
        exact posterior samples (as many of each, genflow's classifier for every side)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        from genflow.engine.c2st import c2st

        torch = self.torch
        self.module.eval()
        scores = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for k, (x_o, reference) in enumerate(references):
                torch.manual_seed(seed + k)
                device = next(self.module.parameters()).device
                drawn = self.sample(len(reference), x_o.to(device)).float().cpu()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    scores.append(c2st(reference, drawn, seed=seed + k))
        return sum(scores) / len(scores)

    def evaluate_average(self, decay: float, data, context, batch_size: int):
        """``evaluate`` with the EMA's weights in the module, then the trained ones back."""
        trained = {k: v.clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.averages[decay].module.state_dict())
        try:
            return self.evaluate(data, context, batch_size)
        finally:
            self.module.load_state_dict(trained)


def _standardized(log_prob, sample, splits):
    """A peer's flow on standardised vectors -> (per-example NLL, sampler) in the data's own
    units: z = (x - loc) / scale with the training split's statistics, log-det -sum log scale,
    the context standardised likewise (no log-det: it is given)."""
    import torch

    loc, scale = (t.float() for t in splits.standardization)
    log_det = torch.log(scale).sum()
    if splits.context_standardization is not None:
        c_loc, c_scale = (t.float() for t in splits.context_standardization)
        condition = lambda c: None if c is None else (c - c_loc.to(c)) / c_scale.to(c)  # noqa: E731
    else:
        condition = lambda c: None  # noqa: E731

    def nll(x, c):
        z = (x - loc.to(x)) / scale.to(x)
        return -log_prob(z, condition(c)) + log_det.to(x)

    def draw(n, c):
        z = sample(n, None if c is None else condition(c.reshape(1, -1)).reshape(-1))
        return z * scale.to(z) + loc.to(z)

    return nll, draw


def _peer_builder(build, cfg, target: int):
    """``build`` with zuko's hidden width matched to genflow's parameter count, where the
    builder takes one."""
    if "hidden" not in inspect.signature(build).parameters:
        return lambda: build(cfg)
    width = zuko_hidden(cfg, lambda w: build(cfg, w)[-1], target)
    return lambda: build(cfg, width)


def build_sides(name: str, comparison, cfg, splits, batches, args, device, seed) -> list[Side]:
    import torch

    from genflow.tasks.common import build_model

    vectors = not cfg.dataset.get("levels")
    fast_settings = args.fast if args.fast is not None else comparison.fast
    if fast_settings is None:
        fast_settings = ["bf16", "compile"]

    def genflow_model():
        model = build_model(cfg.model)
        if splits.standardization is not None or splits.context_standardization is not None:
            model.set_data_standardization(
                *(splits.standardization or (None, None)),
                *(splits.context_standardization or (None, None)),
            )
        return model.to(device)

    from genflow.engine.optim import use_fused

    sides = []
    torch.manual_seed(seed)
    plain = genflow_model()
    # genflow's sides step Adam as genflow train does (optimizer.fused=auto: fused on CPU and
    # CUDA); the peers as their documentation shows, torch.optim.Adam's default step, unless
    # --peer-optimizer fused gives them the fused step too
    genflow_fused = use_fused(plain, cfg.optimizer)
    peer_fused = args.peer_optimizer == "fused" and genflow_fused
    plain.initialize(*batches.labeled(0))
    state = {k: v.clone() for k, v in plain.state_dict().items()}

    def figure(model):
        if vectors:
            return lambda x, c: -model.log_prob(x, c)
        return lambda x, c: model.bpd(-model.log_prob(x, c))

    def sampler(model):
        return lambda n, c: model.sample(n, y=c)

    # genflow trains its own objective (model(x, c).loss, the mean bpd) on both of its sides
    sides.append(
        Side(
            "genflow",
            figure(plain),
            plain,
            forward=lambda x, c: plain(x, c).loss,
            sample=sampler(plain),
            fused=genflow_fused,
        )
    )
    if fast_settings:
        fast = genflow_model()
        fast.load_state_dict(state)  # the same start as the plain side
        trained = torch.compile(fast) if "compile" in fast_settings else fast
        forward = lambda x, c: trained(x, c).loss  # noqa: E731
        precision = "bf16" if "bf16" in fast_settings else "fp32"
        sides.append(
            Side(
                f"genflow {'+'.join(fast_settings)}",
                figure(fast),
                fast,
                precision,
                forward,
                sampler(fast),
                fused=genflow_fused,
            )
        )
    num_dims = math.prod(cfg.dataset.shape)
    target = sum(p.numel() for p in plain.parameters() if p.requires_grad)
    for library, build in (VECTOR_BASELINES if vectors else BASELINES)[comparison.model]:
        if library not in args.peers or library not in comparison.peers:
            continue
        if (comparison.model, library) == ("maf", "normflows") and num_dims > SEQUENTIAL_LIMIT:
            print(f"{name}: {library} skipped: its log-prob is {num_dims} sequential passes")
            continue
        make = _peer_builder(build, cfg, target)
        torch.manual_seed(seed)
        if vectors:
            log_prob, sample, module = make()
            nll, draw = _standardized(log_prob, sample, splits)
            sides.append(Side(library, nll, module.to(device), sample=draw, fused=peer_fused))
            continue
        nll, module = make()
        module = module.to(device)
        with torch.no_grad():
            nll(batches(0))  # data-dependent initialisation (ActNorm)
        sides.append(
            Side(library, lambda x, c, nll=nll: to_bpd(nll(x), cfg), module, fused=peer_fused)
        )
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["maf", "glow", "realnvp"], choices=COMPARISONS
    )
    parser.add_argument("--peers", nargs="+", default=["normflows", "nflows", "zuko"])
    parser.add_argument("--steps", type=int, default=None, help="default: the comparison's")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--peer-optimizer",
        choices=["default", "fused"],
        default="default",
        help="the peers' Adam step: torch's default (as their documentation shows), or the "
        "fused step genflow's trainer takes (optimizer.fused=auto)",
    )
    parser.add_argument(
        "--fast", nargs="*", default=None, help="bf16 compile (default: the comparison's)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="more genflow overrides")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps, then reset")
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="initialisation, data order and noise (all sides); several: mean and sd over them",
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

    from genflow.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"hardware: {hardware(args.device)}; batch {args.batch_size}, Adam {args.lr:g} "
        f"(peers' step: {args.peer_optimizer}), "
        f"seeds {' '.join(str(s) for s in args.seed)}"
    )
    for name in args.models:
        comparison = COMPARISONS[name]
        cfg = compose(comparison.model, comparison.dataset, comparison.overrides + args.set)
        from genflow.data.tabular import complete_table_config

        complete_table_config(cfg.dataset)
        splits = load_dataset(cfg.dataset).to(device)
        runs = [run_comparison(name, comparison, cfg, splits, args, device, s) for s in args.seed]
        report(name, comparison, cfg, runs, args)


def run_comparison(name, comparison, cfg, splits, args, device, seed: int) -> list[dict]:
    """Every side of one comparison trained with ``seed`` (initialisation, data order,
    noise) and tested: one dict per side."""
    import torch

    from genflow.data import EpochBatches

    torch._dynamo.reset()
    context = splits.context or {}
    batches = EpochBatches(splits.train, args.batch_size, seed=seed, labels=context.get("train"))
    sides = build_sides(name, comparison, cfg, splits, batches, args, device, seed)
    counts = [sum(p.numel() for p in side.params) for side in sides]
    for side, count in zip(sides, counts, strict=True):
        if abs(count - counts[0]) > 0.02 * counts[0]:
            print(f"{name}: {side.name} has {count} parameters, genflow {counts[0]} (> 2%)")
    for side in sides:
        side.warm_up(batches, args.warmup, args.lr, device)
        side.keep_averages(args.ema)
    steps = args.steps or comparison.steps
    per_round = max(1, steps // args.rounds)
    done = 0
    while done < steps:
        count = min(per_round, steps - done)
        for side in sides:
            side.train(batches, done, count, device, seed)
        done += count
        print(f"{name} (seed {seed}): {done}/{steps} steps", flush=True)
    test_context = context.get("test")
    results = []
    for side, count in zip(sides, counts, strict=True):
        value, worst = side.evaluate(splits.test, test_context, args.eval_batch_size)
        result = {
            "name": side.name,
            "params": count,
            "value": value,
            "worst": worst,
            "skipped": side.skipped,
            "steps": side.steps,
            "seconds": side.seconds,
            "c2st": side.posterior_c2st(splits.references) if splits.references else None,
            "ema": {
                d: side.evaluate_average(d, splits.test, test_context, args.eval_batch_size)
                for d in args.ema
            },
        }
        results.append(result)
    return results


def report(name, comparison, cfg, runs: list[list[dict]], args) -> None:
    """The table: per side the test figure (mean and standard deviation over the seeds where
    there are several), the worst example over all, skipped steps, steps/s over all seeds'
    steps, genflow's speed ratios, C2ST."""
    import statistics

    def spread(values: list[float], decimals: int) -> str:
        if len(values) == 1:
            return _figure(values[0], decimals)
        return (
            f"{_figure(statistics.mean(values), decimals)}±{statistics.stdev(values):.{decimals}f}"
        )

    vectors = not cfg.dataset.get("levels")
    c2st = runs[0][0]["c2st"] is not None
    unit = "test nll" if vectors else "test bpd"
    width = 9 if len(runs) == 1 else 16
    header = (
        f"{'model':<12} {'library':<24} {'params':>9} {unit:>{width}} {'worst':>8} "
        f"{'skipped':>7} {'steps/s':>8} {'genflow/this':>12} {'fast/this':>10}"
        + (f" {'c2st':>{width - 3}}" if c2st else "")
    )
    steps = args.steps or comparison.steps
    seeds = ", ".join(str(s) for s in args.seed)
    print(f"{name}: {comparison.model} on {comparison.dataset}, {steps} steps, seeds {seeds}")
    print(header)
    print("-" * len(header))
    sides = list(zip(*runs, strict=True))  # per side, its result for each seed
    speeds = [sum(r["steps"] for r in side) / sum(r["seconds"] for r in side) for side in sides]
    fast = 1 if sides[1][0]["name"].startswith("genflow") else None
    for k, side in enumerate(sides):
        first = side[0]
        row = (
            f"{name:<12} {first['name']:<24} {first['params']:>9} "
            f"{spread([r['value'] for r in side], 4):>{width}} "
            f"{_figure(max(r['worst'] for r in side), 2):>8} "
            f"{sum(r['skipped'] for r in side):>7} {speeds[k]:>8.2f}"
        )
        if not first["name"].startswith("genflow"):
            row += f" {speeds[0] / speeds[k]:>11.2f}x"
            row += f" {speeds[fast] / speeds[k]:>9.2f}x" if fast is not None else " " * 11
        elif c2st:
            row += " " * 24
        if c2st:
            row += f" {spread([r['c2st'] for r in side], 3):>{width - 3}}"
        print(row, flush=True)
    for decay in args.ema:
        for side in sides:
            label = f"{side[0]['name']} EMA {decay:g}"
            values = [r["ema"][decay][0] for r in side]
            worst = max(r["ema"][decay][1] for r in side)
            print(
                f"{name:<12} {label:<24} {side[0]['params']:>9} "
                f"{spread(values, 4):>{width}} {_figure(worst, 2):>8}"
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
