"""The variational autoencoder, with a diagonal-Gaussian or flow posterior.

References: Kingma & Welling, 2013, "Auto-Encoding Variational Bayes", arXiv:1312.6114;
Burda et al., 2015, "Importance Weighted Autoencoders", arXiv:1509.00519 (the IW bound);
Kingma et al., 2016, arXiv:1606.04934 (free bits); flow posteriors in posteriors.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.base import Bijection, Compose
from genflow.distributions.likelihoods import build_likelihood
from genflow.models.base import GenerativeModel, Output
from genflow.models.priors import Prior, StandardPrior
from genflow.nn.vae_networks import build_networks, check_network
from genflow.numeric import full_precision

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# model.objective: the bound training maximises (Burda et al. 2016; Rainforth et al. 2018)
OBJECTIVES = ("elbo", "iwae", "miwae", "piwae", "ciwae")
# model.gradient: the encoder's gradient estimator (dreg: Tucker et al. 2019)
GRADIENTS = ("reparam", "dreg")


def training_bound(log_w: Tensor, objective: str, ciwae_beta: float = 0.5) -> Tensor:
    """The objective's per-example bound on log p(x) from log importance weights
    log w = log p(x, z) - log q(z|x) of shape (B, M, K): M groups of K samples each.

    elbo: the mean of log w (K = 1). iwae, miwae: the mean over the M groups of
    log (1/K) sum_k w (IWAE is M = 1). ciwae: per group beta * ELBO + (1 - beta) * IWAE.
    piwae: IWAE over all M * K samples, the generative network's target (its encoder
    trains on MIWAE(M, K); see ``VAE.forward``).
    """
    k = log_w.shape[2]
    if objective == "elbo":
        return log_w.mean((1, 2))
    iwae = torch.logsumexp(log_w, dim=2) - math.log(k)  # (B, M)
    if objective in ("iwae", "miwae"):
        return iwae.mean(1)
    if objective == "ciwae":
        return (ciwae_beta * log_w.mean(2) + (1 - ciwae_beta) * iwae).mean(1)
    if objective == "piwae":
        flat = log_w.flatten(1)
        return torch.logsumexp(flat, dim=1) - math.log(flat.shape[1])
    raise ValueError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def dreg_surrogate(log_w: Tensor) -> Tensor:
    """Per-example surrogate whose gradient through z is the doubly-reparameterised estimator
    of the IWAE gradient for the encoder (Tucker et al. 2019, eq. 5): sum over each group's
    K samples of the squared normalised weight times log w, averaged over the M groups, with
    log w evaluated under a q whose parameters are held fixed (the gradient reaches the
    encoder through z alone)."""
    weights = torch.softmax(log_w.detach(), dim=2)
    return (weights.pow(2) * log_w).sum(2).mean(1)


def image_layout(event_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Images stay (C, H, W); vectors (D,) are laid out as (1, D, 1)."""
    if len(event_shape) == 3:
        return tuple(event_shape)
    return (1, math.prod(event_shape), 1)


def gaussian_kl(mean: Tensor, log_scale: Tensor) -> Tensor:
    """KL(N(mean, exp(log_scale)^2) || N(0, 1)) per dimension, in closed form."""
    return 0.5 * (mean.pow(2) + torch.exp(2 * log_scale) - 1.0) - log_scale


class VAE(GenerativeModel):
    """p(z) a prior (N(0, I) unless ``prior`` is given, see priors.py), p(x|z) a decoder
    likelihood, q(z|x) = a flow of N(mean(x), scale(x)).

    Training minimises -ELBO = recon + beta * KL (bits per dim), averaged over
    ``mc_samples`` posterior samples per example; KL is in closed form for the Gaussian
    posterior under the standard prior, and otherwise the Monte Carlo estimate
    log q(z_K|x) - log p(z_K) with log q(z_K|x) = log q(z_0|x) - sum log|det| for flows.
    beta rises linearly from 0 to ``beta`` over ``kl_warmup_steps``; ``free_bits`` (nats per
    latent dimension) floors the KL term as in Kingma et al. (2016): per dimension for the
    closed form, on the whole KL otherwise. ``objective`` picks a multi-sample bound instead
    of the ELBO (see ``training_bound``): ``k`` importance samples per bound, ``mc_samples``
    bounds averaged, the weights log w = log p(x|z) + beta (log p(z) - log q(z|x)); with
    ``gradient="dreg"`` the encoder's gradient is the doubly-reparameterised estimator. ``evaluate`` reports the ELBO, its recon
    and kl terms, and nll / bpd from the importance-weighted bound with ``iw_samples``
    samples, chunked to about ``iw_chunk_elements`` decoder outputs at a time.
    """

    takes_posterior = True
    can_encode = True
    eval_metrics = ("nll", "bpd", "elbo", "recon", "kl")

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        latent_features: int = 32,
        hidden_features: int = 256,
        num_layers: int = 2,
        network: str = "mlp",
        conv_channels: int = 32,
        dropout: float = 0.0,
        likelihood: str = "auto",
        num_mixtures: int = 5,
        gaussian_scale: float | str | None = "learned",
        posterior: Bijection | None = None,
        prior: Prior | None = None,
        mc_samples: int = 1,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 128,
        iw_chunk_elements: int = 2**24,
        objective: str = "elbo",
        k: int = 1,
        beta: float = 1.0,
        ciwae_beta: float = 0.5,
        gradient: str = "reparam",
    ):
        check_settings(kl_warmup_steps, free_bits, iw_samples, latent_features, mc_samples)
        check_objective(objective, k, mc_samples, beta, ciwae_beta, gradient, free_bits)
        super().__init__(event_shape, levels)
        self.latent_features = int(latent_features)
        self.image_shape = image_layout(self.event_shape)
        self.likelihood = build_likelihood(
            likelihood, self.image_shape, levels, num_mixtures, gaussian_scale
        )
        self.encoder, self.decoder = build_networks(
            network,
            self.image_shape,
            latent_features,
            self.likelihood.num_channels,
            hidden_features,
            num_layers,
            conv_channels,
            dropout,
        )
        self.q_mean = nn.Linear(hidden_features, latent_features)
        self.q_scale = nn.Linear(hidden_features, latent_features)
        self.posterior = posterior if posterior is not None else Compose([])
        self.has_flow = not (
            isinstance(self.posterior, Compose) and len(self.posterior.layers) == 0
        )
        self.prior = prior if prior is not None else StandardPrior(latent_features)
        check_prior(self.prior, self.latent_features)
        check_dreg_posterior(gradient, self.has_flow)
        self.objective, self.k, self.beta = objective, int(k), float(beta)
        self.ciwae_beta, self.gradient = float(ciwae_beta), gradient
        # the KL of a diagonal Gaussian from N(0, I) in closed form; Monte Carlo otherwise
        self.analytic_kl = not self.has_flow and self.prior.standard
        # model.prior.fit=aggregate: the encoder and decoder train against N(0, I), the prior
        # by maximum likelihood of their detached codes
        self.fit_aggregate = getattr(self.prior, "fit", "elbo") == "aggregate"
        self.standard_normal = StandardPrior(latent_features)
        self.mc_samples = int(mc_samples)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.free_bits = float(free_bits)
        self.iw_samples = int(iw_samples)
        self.iw_chunk_elements = int(iw_chunk_elements)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long), persistent=False)

    @staticmethod
    def check_config(model_cfg) -> None:
        """The checks of __init__ that need no network: run before a run directory exists."""
        check_settings(
            model_cfg.get("kl_warmup_steps", 0),
            model_cfg.get("free_bits", 0.0),
            model_cfg.get("iw_samples", 1),
            model_cfg.get("latent_features", 1),
            model_cfg.get("mc_samples", 1),
        )
        check_objective(
            model_cfg.get("objective", "elbo"),
            model_cfg.get("k", 1),
            model_cfg.get("mc_samples", 1),
            model_cfg.get("beta", 1.0),
            model_cfg.get("ciwae_beta", 0.5),
            model_cfg.get("gradient", "reparam"),
            model_cfg.get("free_bits", 0.0),
        )
        posterior = str((model_cfg.get("posterior") or {}).get("_target_", "gaussian"))
        check_dreg_posterior(
            model_cfg.get("gradient", "reparam"), not posterior.endswith("gaussian")
        )
        check_networks_config(model_cfg)

    # -- q(z|x) ------------------------------------------------------------------------
    def set_training_step(self, step: int) -> None:
        self.training_step.fill_(int(step))

    def _layout(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.image_shape)

    def q_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log_scale, context) of q(z_0|x); context feeds the flow posterior."""
        return self._encode_inputs(self._encoder_inputs(x))

    def _encoder_inputs(self, x: Tensor) -> Tensor:
        """Data -> what the encoder reads: (B, C, H, W), discrete levels scaled to [0, 1]."""
        inputs = self._layout(x).to(self.q_mean.weight.dtype)
        return inputs / (self.levels - 1) if self.levels is not None else inputs

    def _encode_inputs(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(z_0|.) of encoder inputs (B, C, H, W) already in the encoder's scale."""
        context = full_precision(self.encoder(inputs.to(self.q_mean.weight.dtype)))
        scale = F.softplus(full_precision(self.q_scale(context))) + 1e-4
        return full_precision(self.q_mean(context)), torch.log(scale), context

    def _q_gaussian(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_scale) of q(z_0|.): what the VampPrior's components are built from."""
        return self._encode_inputs(inputs)[:2]

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return self.prior.log_prob(z, encode=self._q_gaussian)

    def prior_sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return self.prior.sample(n, temperature, encode=self._q_gaussian)

    def draw_posterior(
        self, mean: Tensor, log_scale: Tensor, context: Tensor, k: int, hold_q: bool = False
    ) -> tuple[Tensor, Tensor]:
        """k samples z_K per example (B, k, Dz) and their log q(z_K|x) (B, k). ``hold_q``
        (Gaussian posterior only): log q(z|x) is scored with q's mean and scale held fixed,
        so its gradient reaches the encoder through z alone (what DReG needs)."""
        b, d = mean.shape
        eps = torch.randn(b, k, d, dtype=mean.dtype, device=mean.device)
        z0 = mean.unsqueeze(1) + torch.exp(log_scale).unsqueeze(1) * eps
        q_log_scale = log_scale.unsqueeze(1)
        if hold_q:
            q_log_scale = q_log_scale.detach()
            eps = (z0 - mean.detach().unsqueeze(1)) * torch.exp(-q_log_scale)
        log_q0 = (-0.5 * eps.pow(2) - q_log_scale - HALF_LOG_2PI).sum(2)
        z, logdet = self.posterior(z0.flatten(0, 1), context)  # parameters once per example
        return z.view(b, k, d), log_q0 - logdet.view(b, k)

    def _log_terms(
        self,
        x: Tensor,
        mean: Tensor,
        log_scale: Tensor,
        context: Tensor,
        k: int,
        codes: list[Tensor] | None = None,
        hold_q: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z), log p(z), log q(z|x), each (B, k), for k posterior samples. With
        ``codes`` (a list) the samples (B * k, Dz) are appended to it and log p(z) is the
        standard normal's: the training terms of ``model.prior.fit=aggregate``."""
        b = x.shape[0]
        z, log_q = self.draw_posterior(mean, log_scale, context, k, hold_q)
        flat = z.flatten(0, 1)
        params = full_precision(self.decoder(flat))
        targets = self._layout(x).repeat_interleave(k, dim=0)
        log_px_z = self.likelihood.log_prob(params, targets).view(b, k)
        if codes is not None:
            codes.append(flat)
            return log_px_z, self.standard_normal.log_prob(flat).view(b, k), log_q
        return log_px_z, self.prior_log_prob(flat).view(b, k), log_q

    @torch.no_grad()
    def initialize(self, batch: Tensor, y: Tensor | None = None) -> None:
        """Data-dependent start: a VampPrior's pseudo-inputs become the first batch's images."""
        if hasattr(self.prior, "initialize"):
            self.prior.initialize(self._encoder_inputs(batch))

    # -- the objective -------------------------------------------------------------------
    @property
    def analytic_training_kl(self) -> bool:
        """The training KL in closed form: a Gaussian posterior whose encoder trains against
        N(0, I), the standard prior's or (``fit=aggregate``) in place of the prior's."""
        return self.analytic_kl or (self.fit_aggregate and not self.has_flow)

    def kl_weight(self) -> Tensor:
        """The KL's weight: ``beta`` times the warm-up's step / kl_warmup_steps (at most 1)."""
        if self.kl_warmup_steps <= 0:
            return torch.full((), self.beta, device=self.training_step.device)
        ramp = (self.training_step.float() / self.kl_warmup_steps).clamp(max=1.0)
        return self.beta * ramp

    def forward(self, x: Tensor) -> Output:
        if self.objective != "elbo":
            return self._multi_sample_forward(x)
        mean, log_scale, context = self.q_params(x)
        codes: list[Tensor] | None = [] if self.fit_aggregate else None
        log_px_z, log_pz, log_q = self._log_terms(
            x, mean, log_scale, context, self.mc_samples, codes
        )
        recon = -log_px_z.mean(1)
        if self.analytic_training_kl:
            kl_dims = gaussian_kl(mean, log_scale)
            kl = kl_dims.sum(1)
            kl_term = kl_dims.mean(0).clamp(min=self.free_bits).sum()
        else:
            kl = (log_q - log_pz).mean(1)
            kl_term = kl.mean()
            if self.free_bits > 0:
                kl_term = kl_term.clamp(min=self.free_bits * self.latent_features)
        beta = self.kl_weight()
        loss = self.bpd(recon.mean() + beta * kl_term)
        elbo = -(recon + kl).mean().detach()
        metrics = {
            "bpd": self.bpd(-elbo),  # training: the -ELBO bound, mc_samples samples
            "elbo": elbo,
            "recon": recon.mean().detach(),
            "kl": kl.mean().detach(),
            "beta": beta.detach(),
        }
        if codes is not None:
            # the prior's own objective: the cross-entropy of the codes under it; its
            # gradient reaches the prior alone (the ELBO terms above see N(0, I))
            cross_entropy = -self.prior_log_prob(codes[0].detach()).mean()
            loss = loss + self.bpd(cross_entropy)
            metrics["prior_nll"] = cross_entropy.detach()
        return Output(loss=loss, metrics=metrics)

    def _multi_sample_forward(self, x: Tensor) -> Output:
        """IWAE, MIWAE, PIWAE and CIWAE: the bound of ``training_bound`` over mc_samples
        groups of k posterior samples, with the KL weight inside each log weight."""
        mean, log_scale, context = self.q_params(x)
        b, m, k = x.shape[0], self.mc_samples, self.k
        codes: list[Tensor] | None = [] if self.fit_aggregate else None
        dreg = self.gradient == "dreg"
        log_px_z, log_pz, log_q = self._log_terms(
            x, mean, log_scale, context, m * k, codes, hold_q=dreg
        )
        beta = self.kl_weight()
        log_w = (log_px_z + beta * (log_pz - log_q)).view(b, m, k)
        loss = self.bpd(-training_bound(log_w, self.objective, self.ciwae_beta).mean())
        metrics: dict[str, Tensor] = {}
        if codes is not None:  # as in forward: the prior's own cross-entropy of the codes
            cross_entropy = -self.prior_log_prob(codes[0].detach()).mean()
            loss = loss + self.bpd(cross_entropy)
            metrics["prior_nll"] = cross_entropy.detach()
        if (dreg or self.objective == "piwae") and torch.is_grad_enabled():
            # the encoder's own target: MIWAE(M, K) for PIWAE, DReG's surrogate for DReG
            target = dreg_surrogate(log_w) if dreg else training_bound(log_w, "miwae")
            loss = self._split_gradient(loss, self.bpd(-target.mean()))
        with torch.no_grad():  # the figures at beta = 1: bounds on log p(x)
            log_w1 = (log_px_z + log_pz - log_q).view(b, m, k)
            bound = training_bound(log_w1, self.objective, self.ciwae_beta)
        metrics.update(
            {
                "bpd": self.bpd(-bound.mean()),
                "bound": bound.mean(),
                "elbo": log_w1.mean(),
                "recon": -log_px_z.mean().detach(),
                "kl": (log_q - log_pz).mean().detach(),
                "beta": beta.detach(),
            }
        )
        return Output(loss=loss, metrics=metrics)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The encoder's side: q(z|x)'s network, its mean and scale heads and the posterior
        flow. The rest (decoder, likelihood, prior) is the generative side."""
        parts = (self.encoder, self.q_mean, self.q_scale, self.posterior)
        return [p for part in parts for p in part.parameters() if p.requires_grad]

    def _split_gradient(self, generative_loss: Tensor, inference_loss: Tensor) -> Tensor:
        """A loss whose value is ``generative_loss`` and whose gradient is that loss's for the
        generative parameters and ``inference_loss``'s for the inference parameters (PIWAE's
        two targets, DReG's encoder estimator), so one backward trains both sides."""
        inference = self.inference_parameters()
        ids = {id(p) for p in inference}
        generative = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        grads = torch.autograd.grad(
            generative_loss, generative, retain_graph=True, allow_unused=True
        )
        grads += torch.autograd.grad(inference_loss, inference, allow_unused=True)
        surrogate = sum(
            (p * g).sum()
            for p, g in zip(generative + inference, grads, strict=True)
            if g is not None
        )
        if not isinstance(surrogate, Tensor):
            return generative_loss
        return generative_loss.detach() + surrogate - surrogate.detach()

    # -- evaluation ----------------------------------------------------------------------
    def importance_weighted(self, x: Tensor, k: int) -> dict[str, Tensor]:
        """Per-example nll / bpd from the IW bound with k samples, and elbo, recon, kl.

        log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x), streamed over chunks of samples
        with a running log-sum-exp, so k = 5000 fits in memory.
        """
        mean, log_scale, context = self.q_params(x)
        b = x.shape[0]
        per_sample = self.likelihood.num_channels * self.image_shape[1] * self.image_shape[2]
        chunk = max(1, min(k, self.iw_chunk_elements // max(1, per_sample * b)))
        log_sum = torch.full((b,), -math.inf, dtype=mean.dtype, device=mean.device)
        recon = torch.zeros(b, dtype=torch.float64, device=mean.device)
        kl_mc = torch.zeros_like(recon)
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            log_px_z, log_pz, log_q = self._log_terms(x, mean, log_scale, context, n)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_px_z + log_pz - log_q, dim=1))
            recon -= log_px_z.double().sum(1)
            kl_mc += (log_q - log_pz).double().sum(1)
        recon, kl_mc = recon / k, kl_mc / k
        kl = gaussian_kl(mean, log_scale).double().sum(1) if self.analytic_kl else kl_mc
        nll = -(log_sum.double() - math.log(k))
        return {
            "nll": nll,
            "bpd": self.bpd(nll),
            "elbo": -(recon + kl),
            "recon": recon,
            "kl": kl,
        }

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        return self.importance_weighted(x, self.iw_samples)

    def log_prob(self, x: Tensor) -> Tensor:
        """The importance-weighted estimate of log p(x) with ``iw_samples`` samples."""
        return -self.importance_weighted(x, self.iw_samples)["nll"].to(self.q_mean.weight.dtype)

    # -- sampling and pictures -----------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        z = self.prior_sample(n, temperature).to(self.q_mean.weight.dtype)
        return self.likelihood.sample(self.decoder(z)).reshape(n, *self.event_shape)

    def encode(self, x: Tensor) -> Tensor:
        """z_K of the posterior mean: the flow applied to the mean of q(z_0|x)."""
        mean, _, context = self.q_params(x)
        return self.posterior(mean, context)[0]

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean image (data units, floats) for latents z."""
        return self.likelihood.mean(self.decoder(z)).reshape(z.shape[0], *self.event_shape)

    @torch.no_grad()
    def latent_points(self, x: Tensor) -> Tensor | None:
        """With ``latent_features == 2``: the posterior means (through the flow), as encode."""
        if self.latent_features != 2:
            return None
        return torch.cat([self.encode(chunk) for chunk in x.split(1024)])

    @torch.no_grad()
    def manifold(self, n: int = 15) -> Tensor:
        """With a 2-D latent: decoder means on an n x n grid spanning the prior's central 96%
        per axis (2% to 98% quantiles of 10,000 prior draws), z[1] rising down the rows."""
        draws = self.prior_sample(10_000).to(self.q_mean.weight.dtype)
        low, high = torch.quantile(draws.float(), torch.tensor([0.02, 0.98]), dim=0)
        axes = [torch.linspace(low[i].item(), high[i].item(), n) for i in range(2)]
        z1, z0 = torch.meshgrid(axes[1], axes[0], indexing="ij")
        z = torch.stack([z0.flatten(), z1.flatten()], dim=1).to(draws)
        return self.decode(z)

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, tuple]:
        """Reconstructions under their inputs, decoder means of prior samples, a traversal
        of the most used latent dimensions (rows) from -3 to 3 (columns), the decoder means
        of 63 posterior draws z ~ q(z|x) around the first input (which comes first), and with
        a 2-D latent the decoded manifold."""
        if len(self.event_shape) != 3:
            return {}
        n = min(len(x), 10)
        inputs = x[:n].to(self.q_mean.weight.dtype)
        mean, log_scale, context = self.q_params(x)
        z = self.posterior(mean, context)[0]  # what encode gives, for the whole batch
        recon = self.decode(z[:n])
        prior = self.decode(self.prior_sample(64).to(self.q_mean.weight.dtype))
        usage = gaussian_kl(mean, log_scale).mean(0)
        dims = usage.argsort(descending=True)[: min(8, self.latent_features)]
        values = torch.linspace(-3, 3, 9, dtype=mean.dtype, device=mean.device)
        grid = z[0].repeat(len(dims), len(values), 1)
        grid[torch.arange(len(dims)), :, dims] = values
        traversal = self.decode(grid.flatten(0, 1))
        draws, _ = self.draw_posterior(mean[:1], log_scale[:1], context[:1], 63)
        around = self.decode(draws[0].to(self.q_mean.weight.dtype))
        latents = ", ".join(str(int(d)) for d in dims)
        pictures = {
            "reconstructions": (
                torch.cat([inputs, recon]),
                n,
                "validation images (top row) and their reconstructions (bottom row)",
            ),
            "prior_means": (prior, 8, "decoder means of 64 draws from the prior"),
            "traversal": (
                traversal,
                len(values),
                f"one latent per row (latents {latents}, most used first) set to -3 ... 3 "
                "(columns), the rest at the first image's code",
            ),
            "posterior_draws": (
                torch.cat([inputs[:1], around]),
                8,
                "a validation image (first) and decoder means of 63 draws z ~ q(z|x) for it",
            ),
        }
        if self.latent_features == 2:
            pictures["manifold"] = (
                self.manifold(),
                15,
                "decoder means on a 15 x 15 grid over the prior's central 96%: z0 rising "
                "along the columns, z1 down the rows",
            )
        return pictures


def check_prior(prior: Prior, latent_features: int) -> None:
    if not isinstance(prior, Prior):
        raise ValueError(f"model.prior must build a genflow Prior, got {type(prior).__name__}")
    if prior.features != latent_features:
        raise ValueError(
            f"model.prior is over {prior.features} latents but model.latent_features is "
            f"{latent_features}; leave model.prior.features at ${{model.latent_features}}"
        )


def check_settings(
    kl_warmup_steps: int,
    free_bits: float,
    iw_samples: int,
    latent_features: int,
    mc_samples: int = 1,
) -> None:
    if not (isinstance(kl_warmup_steps, int) and kl_warmup_steps >= 0):
        raise ValueError(f"model.kl_warmup_steps must be an integer >= 0, got {kl_warmup_steps}")
    if not (isinstance(free_bits, (int, float)) and free_bits >= 0):
        raise ValueError(
            f"model.free_bits must be a number >= 0 (nats per latent), got {free_bits}"
        )
    if not (isinstance(iw_samples, int) and iw_samples >= 1):
        raise ValueError(
            f"eval.iw_samples (model.iw_samples) must be a positive integer, got {iw_samples}"
        )
    if not (isinstance(latent_features, int) and latent_features >= 1):
        raise ValueError(f"model.latent_features must be a positive integer, got {latent_features}")
    if not (isinstance(mc_samples, int) and mc_samples >= 1):
        raise ValueError(f"model.mc_samples must be a positive integer, got {mc_samples}")


def check_objective(
    objective: str,
    k: int,
    mc_samples: int,
    beta: float,
    ciwae_beta: float,
    gradient: str,
    free_bits: float,
) -> None:
    """One sentence for an objective setting the VAE would not train as asked."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"model.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}"
        )
    if gradient not in GRADIENTS:
        raise ValueError(f"model.gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"model.k (importance samples per bound) must be a positive integer, got {k}"
        )
    if objective == "elbo" and k != 1:
        raise ValueError(
            f"model.k={k} importance-weights samples, which the ELBO does not: use "
            "model.objective=iwae (or miwae, piwae, ciwae), or model.mc_samples for more ELBO draws"
        )
    if objective == "iwae" and mc_samples != 1:
        raise ValueError(
            f"model.objective=iwae is one bound of model.k samples; for the mean of "
            f"model.mc_samples={mc_samples} such bounds use model.objective=miwae"
        )
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta >= 0):
        raise ValueError(f"model.beta (the KL's weight) must be a number >= 0, got {beta}")
    if not (isinstance(ciwae_beta, (int, float)) and 0 <= ciwae_beta <= 1):
        raise ValueError(f"model.ciwae_beta must be a number in [0, 1], got {ciwae_beta}")
    if gradient == "dreg" and objective not in ("iwae", "miwae", "piwae"):
        raise ValueError(
            f"model.gradient=dreg estimates the gradient of an importance-weighted bound: use it "
            f"with model.objective=iwae, miwae or piwae, not {objective}"
        )
    if objective != "elbo" and free_bits:
        raise ValueError(
            f"model.free_bits floors the ELBO's KL term, which model.objective={objective} has "
            "no separate place for: leave model.free_bits at 0"
        )


def check_dreg_posterior(gradient: str, has_flow: bool) -> None:
    """DReG scores z under q with q's parameters held fixed: a Gaussian posterior only."""
    if gradient == "dreg" and has_flow:
        raise ValueError(
            "model.gradient=dreg needs model/posterior=gaussian: it scores z under q with "
            "q's parameters held fixed, which a flow posterior cannot invert to do"
        )


def check_networks_config(model_cfg) -> None:
    """The likelihood, the network and its dropout of a VAE's config (``model=vae`` and
    ``model=hvae``), checked without building them."""
    shape = image_layout(tuple(model_cfg.event_shape))
    build_likelihood(
        model_cfg.get("likelihood", "auto"),
        shape,
        model_cfg.get("levels"),
        model_cfg.get("num_mixtures", 5),
        model_cfg.get("gaussian_scale", "learned"),
    )
    dropout = model_cfg.get("dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"model.dropout must be a number in [0, 1), got {dropout}")
    check_network(model_cfg.get("network", "mlp"), shape)
