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
    beta rises linearly from 0 to 1 over ``kl_warmup_steps``; ``free_bits`` (nats per
    latent dimension) floors the KL term as in Kingma et al. (2016): per dimension for the
    closed form, on the whole KL otherwise. ``evaluate`` reports the ELBO, its recon
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
    ):
        check_settings(kl_warmup_steps, free_bits, iw_samples, latent_features, mc_samples)
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
        self, mean: Tensor, log_scale: Tensor, context: Tensor, k: int
    ) -> tuple[Tensor, Tensor]:
        """k samples z_K per example (B, k, Dz) and their log q(z_K|x) (B, k)."""
        b, d = mean.shape
        eps = torch.randn(b, k, d, dtype=mean.dtype, device=mean.device)
        z0 = mean.unsqueeze(1) + torch.exp(log_scale).unsqueeze(1) * eps
        log_q0 = (-0.5 * eps.pow(2) - log_scale.unsqueeze(1) - HALF_LOG_2PI).sum(2)
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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z), log p(z), log q(z|x), each (B, k), for k posterior samples. With
        ``codes`` (a list) the samples (B * k, Dz) are appended to it and log p(z) is the
        standard normal's: the training terms of ``model.prior.fit=aggregate``."""
        b = x.shape[0]
        z, log_q = self.draw_posterior(mean, log_scale, context, k)
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
        """beta of the KL warm-up: step / kl_warmup_steps, at most 1."""
        if self.kl_warmup_steps <= 0:
            return torch.ones((), device=self.training_step.device)
        return (self.training_step.float() / self.kl_warmup_steps).clamp(max=1.0)

    def forward(self, x: Tensor) -> Output:
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
