"""ELBO surgery of trained VAE runs: how much any prior could still gain.

    python benchmarks/elbo_surgery.py outputs/multirun/<date>/*       # VAE run directories
    python benchmarks/elbo_surgery.py RUN --splits train test --draws 16

Hoffman & Johnson (2016) split the ELBO's average KL term over a data set of N examples:

    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)),    q(z) = (1/N) sum_n q(z|x_n),

the mutual information between example index and code under q (at most log N) plus the
divergence of the aggregate posterior from the prior. For a fixed encoder and decoder the best
prior is q(z) itself, and the ELBO it would give exceeds the run's by exactly KL(q(z) || p(z)):
that term is the most a learnable prior can add to the training ELBO. Each term is a Monte
Carlo estimate with ``--draws`` codes per example; log q(z) is a log-sum-exp over all N
posteriors. Gaussian posteriors only (a flow posterior's density at another example's code
would need its inverse).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import data_env, hardware  # noqa: E402


def surgery(model, x, draws: int, chunk: int = 512) -> dict[str, float]:
    """Average KL, I(x; z) and KL(q(z) || p(z)) in nats over the examples ``x``."""
    import torch

    from genflow.models.priors import diagonal_mixture_log_prob

    mean, log_scale, context = model.q_params(x)
    n, d = mean.shape
    z, log_q_own = model.draw_posterior(
        mean, log_scale, context, draws
    )  # (n, draws, d), (n, draws)
    flat = z.reshape(-1, d)
    log_p = model.prior_log_prob(flat).view(n, draws)
    # q(z) is the equal-weight mixture of the n posteriors
    equal = torch.zeros(n, dtype=mean.dtype, device=mean.device)
    log_q_aggregate = torch.cat(
        [diagonal_mixture_log_prob(part, equal, mean, log_scale) for part in flat.split(chunk)]
    ).view(n, draws)
    average_kl = float((log_q_own - log_p).mean())
    marginal_kl = float((log_q_aggregate - log_p).mean())
    return {"kl": average_kl, "mutual_info": average_kl - marginal_kl, "marginal_kl": marginal_kl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="VAE run directories")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--draws", type=int, default=8, help="codes per example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_env()
    import torch

    from genflow.api import load_run

    print(f"hardware: {hardware('cpu')}; {args.draws} codes per example, seed {args.seed}")
    print(
        f"{'run':<48} {'split':<6} {'N':>6} {'KL':>7} {'I(x;z)':>7} {'log N':>6} {'KL(q(z)||p)':>12}"
    )
    for path in args.runs:
        run = load_run(path)
        model = run.model
        if not hasattr(model, "q_params") or model.has_flow:
            print(f"{path}: not a VAE with a Gaussian posterior; skipped")
            continue
        for split in args.splits:
            torch.manual_seed(args.seed)
            x = run.data(split)
            with torch.no_grad():
                terms = surgery(model, x, args.draws)
            name = Path(path).name[-48:]
            print(
                f"{name:<48} {split:<6} {len(x):>6} {terms['kl']:>7.3f} {terms['mutual_info']:>7.3f}"
                f" {math.log(len(x)):>6.2f} {terms['marginal_kl']:>12.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
