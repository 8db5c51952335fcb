"""Mutation check: break the math on purpose and make sure the test suite notices.

Each mutant is one textual change to one source file (a flipped log-det sign, a dropped
term, a wrong unit, a leaky mask). For each, the repository is copied to a scratch folder,
the change is applied there (never to this checkout), and the tests that guard that piece
of math are run against the copy. A mutant is *killed* when those tests fail; a *survivor*
is a hole in the suite. The unmutated copy is run first: its tests must pass, or nothing
below means anything.

    python tools/mutants.py                 # every mutant, exit 1 if one survives
    python tools/mutants.py vae_logdet_sign made_mask   # just these
    python tools/mutants.py --list

Takes a few minutes on 2 cores (each mutant runs only its own tests, stopping at the first
failure). Needs GENFLOW_DATA only for mutants whose tests read real MNIST (none today).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must catch it
    why: str


MUTANTS = [
    Mutant(
        "vae_logdet_sign",
        "genflow/models/vae.py",
        "log_q0 - logdet.view(b, k)",
        "log_q0 + logdet.view(b, k)",
        ("tests/test_vae.py",),
        "a flow posterior's log-det enters log q(z_K|x) with the wrong sign",
    ),
    Mutant(
        "flow_dequantization_term",
        "genflow/models/flow.py",
        "logdet = logdet - self.num_dims * math.log(self.levels)",
        "logdet = logdet",
        ("tests/test_metrics.py",),
        "the flows' -D log(levels) of uniform dequantization is dropped",
    ),
    Mutant(
        "gaussian_dequantization_term",
        "genflow/distributions/likelihoods.py",
        "jacobian = -math.log(self.levels) * y[0].numel()",
        "jacobian = 0.0",
        ("tests/test_vae.py",),
        "the dequantized Gaussian decoder forgets the bin width",
    ),
    Mutant(
        "logit_logdet_dropped",
        "genflow/models/flow.py",
        "y, ld = self.logit(y)\n            logdet = logdet + ld",
        "y, ld = self.logit(y)\n            logdet = logdet + 0 * ld",
        ("tests/test_metrics.py",),
        "the logit preprocessing's log-det is not counted",
    ),
    Mutant(
        "bpd_without_ln2",
        "genflow/models/base.py",
        "return nats / (self.num_dims * math.log(2))",
        "return nats / self.num_dims",
        ("tests/test_metrics.py",),
        "bits per dim divides by D instead of D ln 2",
    ),
    Mutant(
        "eval_drops_last_batch",
        "genflow/engine/evaluate.py",
        "for start in range(part.start, part.stop, batch_size):",
        "for start in list(range(part.start, part.stop, batch_size))[:-1]:",
        ("tests/test_metrics.py",),
        "evaluation skips the last (partial) batch of a split held in memory",
    ),
    Mutant(
        "class_base_without_scale_logdet",
        "genflow/models/flow.py",
        "base = self.base.log_prob(standard) - log_scale.flatten(1).sum(1)",
        "base = self.base.log_prob(standard)",
        ("tests/test_class_conditional.py",),
        "a class-conditional flow's Gaussian base forgets the log-det of its scales",
    ),
    Mutant(
        "class_sampler_inverse_scale",
        "genflow/models/flow.py",
        "z = loc + torch.exp(log_scale) * z",
        "z = loc + torch.exp(-log_scale) * z",
        ("tests/test_class_conditional.py",),
        "a class-conditional flow samples with the inverse of its class scale",
    ),
    Mutant(
        "cached_pixelcnn_drops_class_vector",
        "genflow/models/pixelcnn.py",
        "                            h = h + b\n",
        "                            h = h\n",
        ("tests/test_autoregressive.py",),
        "the cached PixelCNN sampler leaves out the class vector before each block",
    ),
    Mutant(
        "iw_without_log_k",
        "genflow/models/vae.py",
        "nll = -(log_sum.double() - math.log(k))",
        "nll = -log_sum.double()",
        ("tests/test_vae.py",),
        "the importance-weighted bound sums the weights instead of averaging them",
    ),
    Mutant(
        "gaussian_kl_sign",
        "genflow/models/vae.py",
        "return 0.5 * (mean.pow(2) + torch.exp(2 * log_scale) - 1.0) - log_scale",
        "return 0.5 * (mean.pow(2) + torch.exp(2 * log_scale) - 1.0) + log_scale",
        ("tests/test_vae.py",),
        "the closed-form Gaussian KL gets the entropy term's sign wrong",
    ),
    Mutant(
        "made_mask",
        "genflow/nn/made.py",
        "degrees_out[:, None] > previous[None, :]",
        "degrees_out[:, None] >= previous[None, :]",
        ("tests/test_bijections.py",),
        "MADE's output layer lets feature i see itself",
    ),
    Mutant(
        "pixelcnn_mask_a",
        "genflow/nn/masked_conv.py",
        "group_in[None, :] < group_out[:, None]",
        "group_in[None, :] <= group_out[:, None]",
        ("tests/test_autoregressive.py",),
        "PixelCNN's mask A lets a pixel's channel see itself",
    ),
    Mutant(
        "coupling_logdet_sign",
        "genflow/bijections/coupling.py",
        "return y, sum_except_batch(log_scale)",
        "return y, -sum_except_batch(log_scale)",
        ("tests/test_bijections.py",),
        "an affine coupling's forward log-det has the wrong sign",
    ),
    Mutant(
        "spline_log_slope_denominator",
        "genflow/bijections/rational_quadratic.py",
        "log_slope = torch.log(numerator) - 2.0 * torch.log(denominator)",
        "log_slope = torch.log(numerator) - torch.log(denominator)",
        ("tests/test_splines.py", "tests/test_bijections.py"),
        "the spline's log-slope drops one power of its denominator",
    ),
    Mutant(
        "spline_inverse_root",
        "genflow/bijections/rational_quadratic.py",
        "b = h_k * d_k - dy * curvature",
        "b = h_k * d_k + dy * curvature",
        ("tests/test_splines.py",),
        "the spline's inverse solves the wrong quadratic",
    ),
    Mutant(
        "spline_boundary_slope",
        "genflow/bijections/rational_quadratic.py",
        "derivatives = F.pad(inner, (1, 1), value=1.0)",
        "derivatives = F.pad(inner, (1, 1), value=2.0)",
        ("tests/test_splines.py",),
        "the spline's slope at +-B no longer meets the identity tails",
    ),
    Mutant(
        "spline_tails_not_identity",
        "genflow/bijections/rational_quadratic.py",
        "out = torch.where(inside, spline, x)",
        "out = spline",
        ("tests/test_splines.py",),
        "inputs outside [-B, B] get the spline's value at 0 instead of passing unchanged",
    ),
    Mutant(
        "spline_coupling_moves_fixed",
        "genflow/bijections/spline.py",
        "x.index_select(1, self.moved_index), params, self.tail_bound, inverse",
        "x.index_select(1, self.fixed_index), params, self.tail_bound, inverse",
        ("tests/test_bijections.py",),
        "the coupling transforms the features it conditions on (not invertible)",
    ),
    Mutant(
        "standardize_logdet_dropped",
        "genflow/bijections/elementwise.py",
        "return (x - self.loc) / self.scale, -self._log_scale(x)",
        "return (x - self.loc) / self.scale, 0.0 * self._log_scale(x)",
        ("tests/test_tabular.py", "tests/test_bijections.py"),
        "a table's standardisation is applied but its log-det is not counted (NLL in the wrong units)",
    ),
    Mutant(
        "context_base_scale_dropped",
        "genflow/models/flow.py",
        "base = self.base.log_prob(standard) - log_scale.flatten(1).sum(1)",
        "base = self.base.log_prob(standard)",
        ("tests/test_context.py",),
        "the context's base log-scale scales z but its log-det is dropped (p(x | c) unnormalised)",
    ),
    Mutant(
        "context_not_in_conditioners",
        "genflow/models/flow.py",
        "flow_context = h if self.flow_takes_context else None",
        "flow_context = None",
        ("tests/test_context.py",),
        "the vector flows' conditioners never see the context (only the base does)",
    ),
    Mutant(
        "context_gates_blind",
        "genflow/nn/residual_mlp.py",
        "update = update * torch.sigmoid(self.gate(context))",
        "update = update * torch.sigmoid(0.0 * self.gate(context))",
        ("tests/test_context.py",),
        "the residual conditioner's blocks ignore the context (only its input layer reads it)",
    ),
    Mutant(
        "optimizer_never_fused",
        "genflow/engine/optim.py",
        'options = {"fused": True} if use_fused(model, cfg) else {}',
        "options = {}",
        ("tests/test_trainer.py",),
        "optimizer.fused=auto silently keeps torch's per-tensor loop (the speed is lost)",
    ),
    Mutant(
        "cnf_divergence_sign",
        "genflow/bijections/ode.py",
        "return self.flow.divergence(t, x, self.context, self.eps, self.create_graph)",
        "v, div = self.flow.divergence(t, x, self.context, self.eps, self.create_graph)\n"
        "        return v, -div",
        ("tests/test_cnf.py",),
        "a continuous flow's log-det integrates minus the divergence",
    ),
    Mutant(
        "cnf_exact_trace_offdiagonal",
        "genflow/bijections/ode.py",
        "jac.diagonal(dim1=-2, dim2=-1).sum(-1)",
        "jac.sum((-2, -1))",
        ("tests/test_cnf.py",),
        "the exact divergence sums the whole Jacobian instead of its diagonal",
    ),
    Mutant(
        "cnf_hutchinson_variance_of_one_probe",
        "genflow/bijections/ode.py",
        "per_probe.var(0) / k",
        "per_probe.var(0)",
        ("tests/test_cnf.py",),
        "the Hutchinson standard error is a single probe's, not the mean's over the probes",
    ),
    Mutant(
        "cnf_ot_path_ignores_sigma_min",
        "genflow/models/cnf.py",
        "return (1.0 - s * t) * x0 + t * x1, x1 - s * x0",
        "return (1.0 - s * t) * x0 + t * x1, x1 - x0",
        ("tests/test_cnf.py",),
        "flow matching's target velocity leaves out sigma_min (not the path's derivative)",
    ),
    Mutant(
        "cnf_dequantization_term",
        "genflow/models/cnf.py",
        "nll = -(self.base.log_prob(solved.out) + pre_logdet + solved.logdet)",
        "nll = -(self.base.log_prob(solved.out) + solved.logdet)",
        ("tests/test_cnf.py",),
        "the CNF's evaluation drops the dequantization, scaling and logit terms",
    ),
    Mutant(
        "vae_dreg_weights_not_squared",
        "genflow/models/vae.py",
        "(weights.pow(2) * log_w)",
        "(weights * log_w)",
        ("tests/test_vae_objectives.py",),
        "DReG's encoder surrogate weights each sample by its normalised weight, not its square",
    ),
    Mutant(
        "vae_dreg_q_not_held",
        "genflow/models/vae.py",
        "q_log_scale = q_log_scale.detach()\n            eps = (z0 - mean.detach().unsqueeze(1))",
        "eps = (z0 - mean.unsqueeze(1))",
        ("tests/test_vae_objectives.py",),
        "DReG scores z under q with q's parameters live, keeping the score term it removes",
    ),
    Mutant(
        "vae_piwae_encoder_on_iwae",
        "genflow/models/vae.py",
        'else training_bound(log_w, "miwae")',
        'else training_bound(log_w, "piwae")',
        ("tests/test_vae_objectives.py",),
        "PIWAE trains its encoder on IWAE over all samples instead of MIWAE(M, K)",
    ),
    Mutant(
        "vae_miwae_groups_interleaved",
        "genflow/models/vae.py",
        "log_w = (log_px_z + beta * (log_pz - log_q)).view(b, m, k)",
        "log_w = (log_px_z + beta * (log_pz - log_q)).view(b, k, m).transpose(1, 2)",
        ("tests/test_vae_objectives.py",),
        "MIWAE's groups take every M-th sample instead of K consecutive ones",
    ),
    Mutant(
        "vae_ciwae_weights_swapped",
        "genflow/models/vae.py",
        "(ciwae_beta * log_w.mean(2) + (1 - ciwae_beta) * iwae)",
        "((1 - ciwae_beta) * log_w.mean(2) + ciwae_beta * iwae)",
        ("tests/test_vae_objectives.py",),
        "CIWAE weighs the ELBO by 1 - beta and IWAE by beta",
    ),
    Mutant(
        "vae_beta_outside_the_weights",
        "genflow/models/vae.py",
        "log_w = (log_px_z + beta * (log_pz - log_q)).view(b, m, k)",
        "log_w = (log_px_z + (log_pz - log_q)).view(b, m, k)",
        ("tests/test_vae_objectives.py",),
        "the importance-weighted objectives ignore model.beta",
    ),
    Mutant(
        "hvae_kl_reversed",
        "genflow/models/hvae.py",
        "gaussian_kl_between(q_mean, q_log_scale, p_mean, p_log_scale)",
        "gaussian_kl_between(p_mean, p_log_scale, q_mean, q_log_scale)",
        ("tests/test_hvae.py",),
        "the hierarchical VAE's closed-form KL is KL(p || q) instead of KL(q || p)",
    ),
    Mutant(
        "hvae_top_prior_dropped",
        "genflow/models/hvae.py",
        'out["log_p"].append(gaussian_log_prob(z, p_mean, p_log_scale))',
        'out["log_p"].append(gaussian_log_prob(z, p_mean, p_log_scale) * (group > 0))',
        ("tests/test_hvae.py",),
        "the importance weights leave out the top group's log p(z_L)",
    ),
    Mutant(
        "hvae_log_density_without_scale",
        "genflow/models/hvae.py",
        "- log_scale - HALF_LOG_2PI).sum(-1)",
        "- HALF_LOG_2PI).sum(-1)",
        ("tests/test_hvae.py",),
        "the hierarchical VAE's Gaussian log-densities drop the -log(scale) term",
    ),
    Mutant(
        "hvae_free_bits_on_the_sum",
        "genflow/models/hvae.py",
        "kl_term = kls.mean(0).clamp(min=floor).sum()",
        "kl_term = kls.mean(0).sum().clamp(min=floor)",
        ("tests/test_hvae.py",),
        "free bits floor the whole KL instead of each group's",
    ),
    Mutant(
        "stream_rank_order",
        "genflow/data/stream.py",
        "return lambda j: j + 1 if j % n != n - 1 else j + 1 + (world - 1) * n",
        "return lambda j: j + 1",
        ("tests/test_stream.py::test_ranks_read_disjoint_shares_that_cover_each_epoch_once",),
        "a rank's loader runs ahead along every micro-batch, not its own share",
    ),
    Mutant(
        "stream_epoch_order",
        "genflow/data/stream.py",
        "index = self.order.positions(j).tolist()",
        "index = self.order.positions(j + 1).tolist()",
        ("tests/test_stream.py::test_streamed_and_in_memory_folders_train_to_the_same_weights",),
        "a streamed micro-batch holds other examples than the in-memory path's",
    ),
    Mutant(
        "stream_loader_draws_global_rng",
        "genflow/data/stream.py",
        "generator=torch.Generator().manual_seed(0),",
        "generator=None,",
        ("tests/test_stream.py::test_streamed_and_in_memory_folders_train_to_the_same_weights",),
        "starting a loader draws its workers' seed from the global RNG (the noise stream)",
    ),
    Mutant(
        "vqvae_bound_without_prior",
        "genflow/models/vqvae.py",
        "return recon + prior",
        "return recon",
        ("tests/test_vqvae.py",),
        "the VQ-VAE's bound drops the prior's log p(k)",
    ),
    Mutant(
        "vqvae_no_straight_through",
        "genflow/models/vqvae.py",
        "decoded = self.decoder(z_e + (z_q - z_e).detach())",
        "decoded = self.decoder(z_q)",
        ("tests/test_vqvae.py",),
        "the decoder's gradient never reaches the encoder (no straight-through estimator)",
    ),
    Mutant(
        "vqvae_commitment_sign",
        "genflow/models/vqvae.py",
        "loss = (nll + self.commitment * commit)",
        "loss = (nll - self.commitment * commit)",
        ("tests/test_vqvae.py",),
        "the commitment term pushes the encoder away from its codes",
    ),
    Mutant(
        "vqvae_ema_weights_swapped",
        "genflow/models/vqvae.py",
        "self.counts.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)",
        "self.counts.mul_(1 - self.decay).add_(one_hot.sum(0), alpha=self.decay)",
        ("tests/test_vqvae.py",),
        "the codebook's counts keep the new batch's weight and forget their own",
    ),
    Mutant(
        "vqvae_no_restarts",
        "genflow/models/vqvae.py",
        "dead = (self.counts < self.restart_below)",
        "dead = (self.counts < -1.0)",
        ("tests/test_vqvae.py",),
        "codes nobody chooses are never restarted",
    ),
]


def copy_repo(dest: Path) -> None:
    for name in ("genflow", "tests", "conf"):
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("GENFLOW_DATA", str(REPO.parent / "shared" / "data"))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", *tests],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, time.perf_counter() - start, lines[-1] if lines else proc.stderr[-300:]


def apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name}: '{mutant.old}' occurs {count} times in {mutant.path} "
            "(expected once); update the mutant to the current source"
        )
    path.write_text(text.replace(mutant.old, mutant.new))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    known = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:30s} {m.path:38s} {m.why}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown mutant(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        return 2
    chosen = [known[n] for n in args.names] if args.names else MUTANTS
    with tempfile.TemporaryDirectory(prefix="genflow-mutants-") as scratch:
        clean = Path(scratch) / "clean"
        copy_repo(clean)
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        rc, seconds, summary = run_tests(clean, tests)
        print(f"unmutated: {summary} ({seconds:.0f} s)", flush=True)
        if rc != 0:
            print("the unmutated tests fail: fix them before reading any mutant")
            return 2
        survivors = []
        for mutant in chosen:
            root = Path(scratch) / mutant.name
            copy_repo(root)
            apply(root, mutant)
            rc, seconds, summary = run_tests(root, mutant.tests)
            verdict = "killed" if rc == 1 else ("SURVIVED" if rc == 0 else f"error rc={rc}")
            if rc == 0:
                survivors.append(mutant.name)
            print(f"{mutant.name:30s} {verdict:9s} {seconds:5.0f} s  {summary}", flush=True)
            shutil.rmtree(root)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants killed")
    if survivors:
        print(f"survivors: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
