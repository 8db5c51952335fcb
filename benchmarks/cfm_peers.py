"""genflow's flow matching beside torchcfm's and Meta's flow_matching: velocity fields of the
same size, trained the same way, scored by one likelihood protocol.

    python benchmarks/cfm_peers.py                                  # digits, 2000 steps
    python benchmarks/cfm_peers.py --dataset mnist --steps 1500     # the issue's MNIST check
    python benchmarks/cfm_peers.py --seed 0 1 2                     # mean and sd over seeds

Sides (each library's own training step and its own velocity network, at genflow's
parameter count within 2%):

- genflow: ``genflow train model=cnf dataset=X`` as composed (plus ``--set``): the conditional
  OT path, t ~ U[0, 1], its VelocityMLP (Fourier time features and the time in every layer).
- torchcfm: ``ConditionalFlowMatcher(sigma=0)`` draws t, x_t and u_t; its ``models.MLP``
  (three SELU hidden layers, t concatenated to the input), width chosen for the count.
- flow_matching: ``AffineProbPath(CondOTScheduler())`` gives x_t and dx_t for t ~ U[0, 1];
  the MLP of its 2-D example (four Swish hidden layers, t concatenated to the input), width
  chosen for the count.

Every side trains on the same batches (EpochBatches(seed) at step i), dequantized with the
same noise and through genflow's preprocessing (``model.logit_alpha``; the RNG is seeded per
step before each side's draws), with Adam at ``--lr`` (genflow's fused step, as its trainer
takes it; the peers' default step unless ``--peer-optimizer fused``), in ``--rounds``
alternating rounds so a drift in the machine's speed hits every side alike.

Then every side's field is scored on the whole test split by genflow's likelihood protocol
(the field inside genflow's CNF: dopri5 at ``--tol``, the exact divergence up to 64 values
and Hutchinson's above, the dequantization, scaling and logit terms counted; the same noise
for every side) with the NFE of the solves, and, as an independent check of genflow's
likelihood code, by flow_matching's own ``ODESolver.compute_likelihood`` (same solver and
tolerance, exact divergence where genflow's is exact) plus the same preprocessing terms.
Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import data_env, hardware  # noqa: E402
from throughput import compose, sync  # noqa: E402

PEERS = ("torchcfm", "flow_matching")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _width_for(target: int, count) -> int:
    """The smallest hidden width whose network has at least ``target`` parameters."""
    width = 1
    while count(width) < target:
        width += 1
    return width if abs(count(width) - target) <= abs(count(width - 1) - target) else width - 1


def _time_concat():
    from torch import nn

    class TimeConcat(nn.Module):
        """A peer's network on torch.cat([x, t]) as genflow's velocity(t, x, context)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, t, x, context=None):
            import torch

            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
            return self.net(torch.cat([x, t.unsqueeze(-1)], dim=-1))

    return TimeConcat


def flow_matching_mlp(features: int, hidden: int):
    """The MLP of flow_matching's 2-D example: [x, t] -> 4 hidden layers with Swish -> v."""
    from torch import nn

    layers, width = [], features + 1
    for _ in range(4):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(hidden, features))


def build_sides(cfg, peers, device):
    """(name, module whose parameters train, loss(x1, draw) -> Tensor, velocity(t, x))."""
    import torch

    from genflow.tasks.common import build_model

    model = build_model(cfg.model).to(device)
    target = _count(model)
    features = model.num_dims
    sides = [("genflow", model, None, model.flow.velocity)]
    if "torchcfm" in peers:
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
        from torchcfm.models import MLP

        width = _width_for(target, lambda w: _count(MLP(features, w=w, time_varying=True)))
        net = MLP(features, w=width, time_varying=True).to(device)
        matcher = ConditionalFlowMatcher(sigma=0.0)

        def torchcfm_loss(x1, net=net, matcher=matcher):
            x0 = torch.randn_like(x1)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            return (net(torch.cat([xt, t[:, None]], dim=-1)) - ut).pow(2).mean()

        sides.append(("torchcfm", net, torchcfm_loss, _time_concat()(net)))
    if "flow_matching" in peers:
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        width = _width_for(target, lambda h: _count(flow_matching_mlp(features, h)))
        net = flow_matching_mlp(features, width).to(device)
        path = AffineProbPath(scheduler=CondOTScheduler())

        def flow_matching_loss(x1, net=net, path=path):
            x0 = torch.randn_like(x1)
            t = torch.rand(x1.shape[0], device=x1.device)
            sample = path.sample(t=t, x_0=x0, x_1=x1)
            v = net(torch.cat([sample.x_t, t[:, None]], dim=-1))
            return (v - sample.dx_t).pow(2).mean()

        sides.append(("flow_matching", net, flow_matching_loss, _time_concat()(net)))
    return model, sides


def run(cfg, splits, args, device, seed: int) -> list[dict]:
    import torch

    from genflow.data import EpochBatches
    from genflow.engine.evaluate import evaluate

    torch.manual_seed(seed)
    model, sides = build_sides(cfg, args.peers, device)
    target = _count(model)
    for name, module, _, _ in sides:
        if abs(_count(module) - target) > 0.02 * target:
            raise SystemExit(f"{name} has {_count(module)} parameters, genflow {target}")
    batches = EpochBatches(splits.train, args.batch_size, seed)
    optimizers = {}
    for name, module, _, _ in sides:
        fused = name == "genflow" or args.peer_optimizer == "fused"
        options = {"fused": True} if fused and device.type in ("cpu", "cuda") else {}
        optimizers[name] = torch.optim.Adam(module.parameters(), lr=args.lr, **options)

    def step(name, module, loss_fn, i):
        torch.manual_seed(seed * 1_000_003 + i)  # the same dequantization noise, x0 and t
        x = batches(i)
        if loss_fn is None:
            loss = module(x).loss
        else:
            with torch.no_grad():
                x1 = model.preprocess(x)[0].reshape(len(x), -1)
            loss = loss_fn(x1)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    # untimed warm-up steps (first calls, allocator), then every side back at its start
    for name, module, loss_fn, _ in sides:
        start_state = copy.deepcopy(module.state_dict())
        for i in range(args.warmup):
            step(name, module, loss_fn, i)
        module.load_state_dict(start_state)
        optimizers[name].state.clear()
    elapsed = dict.fromkeys([s[0] for s in sides], 0.0)
    per_round = math.ceil(args.steps / args.rounds)
    done = 0
    while done < args.steps:
        n = min(per_round, args.steps - done)
        for name, module, loss_fn, _ in sides:
            module.train()
            sync(device)
            start = time.perf_counter()
            for i in range(done, done + n):
                step(name, module, loss_fn, i)
            sync(device)
            elapsed[name] += time.perf_counter() - start
        done += n

    from genflow.bijections.ode import Solver

    solver = Solver(method="dopri5", rtol=args.tol, atol=args.tol, max_nfe=args.max_nfe)
    model.flow.solver = solver
    own = model.flow.velocity
    rows = []
    for name, module, _, velocity in sides:
        module.eval()
        model.flow.velocity = velocity if name != "genflow" else own
        start = time.perf_counter()
        metrics = evaluate(model, splits.test, args.eval_batch_size, seed=seed)
        row = {
            "side": name,
            "params": _count(module),
            "bpd": metrics["bpd"],
            "nfe": metrics["nfe"],
            "bpd_se": metrics.get("bpd_se"),
            "eval_s": time.perf_counter() - start,
            "steps_per_s": args.steps / elapsed[name],
        }
        if not args.no_check:
            row["bpd_flow_matching_solver"] = flow_matching_bpd(
                model, velocity, splits.test, args, seed
            )
        rows.append(row)
        print(f"  seed {seed}: {row}", flush=True)
    model.flow.velocity = own
    return rows


def flow_matching_bpd(model, velocity, data, args, seed: int) -> float:
    """The test bpd by flow_matching's ODESolver.compute_likelihood (dopri5, the same
    tolerance; the exact divergence where genflow's is exact), plus genflow's preprocessing
    terms (the same dequantization noise as genflow's evaluation)."""
    import torch
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return velocity(t, x)

    solver = ODESolver(velocity_model=Wrapped(torch.nn.Identity()))
    exact = model.flow.divergence_kind == "exact"
    total = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(data), args.eval_batch_size):
            x = data[start : start + args.eval_batch_size]
            with torch.no_grad():
                y, pre_logdet = model.preprocess(x)
            y = y.reshape(len(x), -1)
            _, log_p = solver.compute_likelihood(
                x_1=y,
                log_p0=lambda z: model.base.log_prob(z),
                step_size=None,
                method="dopri5",
                atol=args.tol,
                rtol=args.tol,
                exact_divergence=exact,
            )
            total += float((log_p.detach() + pre_logdet).sum())
    return -total / len(data) / (model.num_dims * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--peer-optimizer", choices=["default", "fused"], default="default")
    parser.add_argument("--set", nargs="*", default=[], help="more genflow overrides")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps, then reset")
    parser.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol")
    parser.add_argument("--max-nfe", type=int, default=5000)
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--no-check", action="store_true", help="skip flow_matching's solver")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    data_env()
    import torch

    from genflow.data import load_dataset

    device = torch.device(args.device)
    cfg = compose("cnf", args.dataset, args.set)
    splits = load_dataset(cfg.dataset).to(device)
    print(
        f"hardware: {hardware(args.device)}; {args.dataset}, {args.steps} steps, batch "
        f"{args.batch_size}, Adam {args.lr:g} (peers' step: {args.peer_optimizer}), dopri5 "
        f"at {args.tol:g}, seeds {' '.join(str(s) for s in args.seed)}"
    )
    runs = [run(cfg, splits, args, device, seed) for seed in args.seed]
    report(runs)


def report(runs: list[list[dict]]) -> None:
    import statistics

    def stat(values):
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    genflow_speed = statistics.mean(r[0]["steps_per_s"] for r in runs)
    print(
        "| side | params | test bpd | NFE | bpd by flow_matching's solver | steps/s | genflow's speed x |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, first in enumerate(runs[0]):
        rows = [r[i] for r in runs]
        check = [r["bpd_flow_matching_solver"] for r in rows if "bpd_flow_matching_solver" in r]
        speed = statistics.mean(r["steps_per_s"] for r in rows)
        print(
            f"| {first['side']} | {first['params']} | {stat([r['bpd'] for r in rows])} | "
            f"{statistics.mean(r['nfe'] for r in rows):.0f} | "
            f"{stat(check) if check else '-'} | {speed:.1f} | {genflow_speed / speed:.2f} |"
        )


if __name__ == "__main__":
    main()
