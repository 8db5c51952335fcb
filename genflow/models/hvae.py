"""A hierarchical VAE: a top-down stack of latent groups (Sønderby et al. 2016, arXiv:1602.02282;
Vahdat & Kautz 2020, NVAE, arXiv:2007.03898; Child 2021, VDVAE, arXiv:2011.10650).

Generative model: p(z_L) = N(0, I), p(z_l | z_>l) a diagonal Gaussian read from a top-down state
h_l that gathers every group above, p(x | z) read from the state under the last group. Inference
shares the top-down pass (as in the Ladder VAE and NVAE): a bottom-up pass turns x into
features d_1 ... d_L, and q(z_l | z_>l, x) is read from h_l and d_l, by default as a shift and
a scale of the prior's parameters (NVAE's residual posterior). The decoder reads the state under
the last group and every group's z. The training KL is summed group by
group in closed form, each conditional on the groups drawn above it; its Monte Carlo
counterpart, log q(z|x) - log p(z), has the same expectation (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genflow.distributions.likelihoods import build_likelihood
from genflow.models.base import GenerativeModel, Output
from genflow.models.vae import HALF_LOG_2PI, check_networks_config, check_settings, image_layout
from genflow.nn.gated import GatedLinear
from genflow.nn.vae_networks import build_networks
from genflow.numeric import full_precision


def gaussian_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(z; mean, exp(log_scale)^2), summed over the last dimension."""
    return (-0.5 * ((z - mean) * torch.exp(-log_scale)).pow(2) - log_scale - HALF_LOG_2PI).sum(-1)


def gaussian_kl_between(
    q_mean: Tensor, q_log_scale: Tensor, p_mean: Tensor, p_log_scale: Tensor
) -> Tensor:
    """KL(N(q_mean, q_scale^2) || N(p_mean, p_scale^2)) per dimension, in closed form."""
    ratio = torch.exp(2 * (q_log_scale - p_log_scale))
    shift = ((q_mean - p_mean) * torch.exp(-p_log_scale)).pow(2)
    return 0.5 * (ratio + shift - 1) - (q_log_scale - p_log_scale)


def _soft_clamp(raw: Tensor, bound: float = 5.0) -> Tensor:
    """``raw`` kept in (-bound, bound) smoothly (the identity near 0): a log-scale that a
    diverging network cannot push to a zero or an exploding scale."""
    return bound * torch.tanh(raw / bound)


class _Residual(nn.Module):
    """h + a gated MLP of [h, extra]; ``zero_init``: its last layer starts at zero, so the
    block starts as h (the bottom-up blocks). The posterior blocks and the merges of z into
    the state do not: with them at zero, x and z reach the decoder only after a step has moved
    them, and on digits every group's KL went to 0 before that (posterior collapse)."""

    def __init__(
        self, features: int, extra: int, layers: int, dropout: float, zero_init: bool = True
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        width = features + extra
        for _ in range(layers):
            blocks.append(GatedLinear(width, features))
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = features
        out = nn.Linear(features, features)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*blocks, out)

    def forward(self, h: Tensor, extra: Tensor | None = None) -> Tensor:
        return h + self.net(h if extra is None else torch.cat([h, extra], dim=-1))


def _head(in_features: int, out_features: int, zero_init: bool = True) -> nn.Linear:
    head = nn.Linear(in_features, out_features)
    if zero_init:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head


class HVAE(GenerativeModel):
    """``num_groups`` groups of ``latent_features`` latents, top-down. ``evaluate`` reports
    the ELBO, its recon and kl terms, and nll / bpd from the importance-weighted bound with
    ``iw_samples`` samples; training maximises the ELBO with the KL summed per group in closed
    form, with KL warm-up and ``free_bits`` (nats per latent) floored per group."""

    can_encode = True
    eval_metrics = ("nll", "bpd", "elbo", "recon", "kl")

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        num_groups: int = 2,
        latent_features: int = 16,
        hidden_features: int = 256,
        num_layers: int = 2,
        network: str = "mlp",
        conv_channels: int = 32,
        dropout: float = 0.0,
        likelihood: str = "auto",
        num_mixtures: int = 5,
        gaussian_scale: float | str | None = "learned",
        residual_posterior: bool = True,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 128,
        iw_chunk_elements: int = 2**24,
    ):
        check_settings(kl_warmup_steps, free_bits, iw_samples, latent_features)
        check_groups(num_groups)
        super().__init__(event_shape, levels)
        self.image_shape = image_layout(self.event_shape)
        self.num_groups, self.latent_features = int(num_groups), int(latent_features)
        self.residual_posterior = bool(residual_posterior)
        self.likelihood = build_likelihood(
            likelihood, self.image_shape, levels, num_mixtures, gaussian_scale
        )
        hidden = int(hidden_features)
        self.encoder, self.decoder = build_networks(
            network,
            self.image_shape,
            hidden + self.num_groups * int(latent_features),  # [h_0, z_L, ..., z_1]
            self.likelihood.num_channels,
            hidden,
            num_layers,
            conv_channels,
            dropout,
        )
        z = self.latent_features
        # bottom-up: d_1 = encoder(x), d_l+1 = d_l + f(d_l); top-down: h_L learned, then
        # h_l-1 = h_l + g(h_l, z_l); the groups are indexed top first (0 is z_L)
        self.up = nn.ModuleList(
            _Residual(hidden, 0, 1, dropout) for _ in range(self.num_groups - 1)
        )
        self.h_top = nn.Parameter(torch.zeros(hidden))
        self.prior_heads = nn.ModuleList(_head(hidden, 2 * z) for _ in range(self.num_groups - 1))
        # dropout stays where the VAE has it (the encoder, the decoder, the bottom-up blocks):
        # in the posterior blocks and the merges it drops parts of z's own signal
        self.posterior_nets = nn.ModuleList(
            _Residual(hidden, hidden, 1, 0.0, zero_init=False) for _ in range(self.num_groups)
        )
        # q's heads start random (not q = p): with q = p, a decoder that barely sees z yet
        # gave no signal to move q, and every group's KL went to 0 on digits
        self.posterior_heads = nn.ModuleList(
            _head(hidden, 2 * z, zero_init=False) for _ in range(self.num_groups)
        )
        self.merges = nn.ModuleList(
            _Residual(hidden, z, 1, 0.0, zero_init=False) for _ in range(self.num_groups)
        )
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.free_bits = float(free_bits)
        self.iw_samples = int(iw_samples)
        self.iw_chunk_elements = int(iw_chunk_elements)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long), persistent=False)

    @staticmethod
    def check_config(model_cfg) -> None:
        check_settings(
            model_cfg.get("kl_warmup_steps", 0),
            model_cfg.get("free_bits", 0.0),
            model_cfg.get("iw_samples", 1),
            model_cfg.get("latent_features", 1),
        )
        check_groups(model_cfg.get("num_groups", 2))
        check_networks_config(model_cfg)

    def set_training_step(self, step: int) -> None:
        self.training_step.fill_(int(step))

    def kl_weight(self) -> Tensor:
        if self.kl_warmup_steps <= 0:
            return torch.ones((), device=self.training_step.device)
        return (self.training_step.float() / self.kl_warmup_steps).clamp(max=1.0)

    # -- the two passes ----------------------------------------------------------------
    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """Features d_L ... d_1 of x (top group first), each (B, hidden)."""
        inputs = x.reshape(x.shape[0], *self.image_shape).to(self.h_top.dtype)
        if self.levels is not None:
            inputs = inputs / (self.levels - 1)
        features = [full_precision(self.encoder(inputs))]
        for block in self.up:
            features.append(block(features[-1]))
        return features[::-1]

    def _prior(self, group: int, h: Tensor) -> tuple[Tensor, Tensor]:
        if group == 0:  # the top group: N(0, I)
            zeros = h.new_zeros(h.shape[0], self.latent_features)
            return zeros, zeros
        mean, raw = self.prior_heads[group - 1](h).chunk(2, dim=-1)
        return mean, _soft_clamp(raw)

    def _posterior(
        self, group: int, h: Tensor, d: Tensor, p_mean: Tensor, p_log_scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        mean, raw = self.posterior_heads[group](self.posterior_nets[group](h, d)).chunk(2, dim=-1)
        if self.residual_posterior:  # NVAE: q relative to p, starting equal to it
            return p_mean + mean, p_log_scale + _soft_clamp(raw)
        return mean, _soft_clamp(raw, 7.0)

    def top_down(
        self,
        features: list[Tensor] | None,
        n: int,
        temperature: float = 1.0,
        latents: list[Tensor] | None = None,
        use_means: bool = False,
    ) -> dict:
        """One top-down pass for n rows. With ``features`` (bottom-up, one row per example
        and sample) the groups are drawn from q, else from p (scaled by ``temperature``);
        ``latents`` fixes them instead; ``use_means`` takes each q's mean. Returns the
        decoder's parameters, the latents and per group (B,) log p, log q and closed-form KL."""
        h = self.h_top.expand(n, -1)
        out = {"z": [], "log_p": [], "log_q": [], "kl": []}
        for group in range(self.num_groups):
            p_mean, p_log_scale = self._prior(group, h)
            if latents is not None:
                z = latents[group]
            elif features is None:
                eps = torch.randn_like(p_mean)
                z = p_mean + temperature * torch.exp(p_log_scale) * eps
            else:
                q_mean, q_log_scale = self._posterior(
                    group, h, features[group], p_mean, p_log_scale
                )
                z = (
                    q_mean
                    if use_means
                    else q_mean + torch.exp(q_log_scale) * torch.randn_like(q_mean)
                )
                out["log_q"].append(gaussian_log_prob(z, q_mean, q_log_scale))
                out["kl"].append(
                    gaussian_kl_between(q_mean, q_log_scale, p_mean, p_log_scale).sum(-1)
                )
            out["log_p"].append(gaussian_log_prob(z, p_mean, p_log_scale))
            out["z"].append(z)
            h = self.merges[group](h, z)
        # the decoder reads the state and every group directly (a skip, as the VAE's decoder
        # reads z): the deeper groups' signal does not have to pass every merge
        out["params"] = full_precision(self.decoder(torch.cat([h, *out["z"]], dim=-1)))
        return out

    def _targets(self, x: Tensor, k: int = 1) -> Tensor:
        targets = x.reshape(x.shape[0], *self.image_shape)
        return targets.repeat_interleave(k, dim=0) if k > 1 else targets

    # -- the objective -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Output:
        passes = self.top_down(self.bottom_up(x), x.shape[0])
        recon = -self.likelihood.log_prob(passes["params"], self._targets(x))
        kls = torch.stack(passes["kl"], dim=1)  # (B, groups)
        floor = self.free_bits * self.latent_features
        kl_term = kls.mean(0).clamp(min=floor).sum() if floor > 0 else kls.sum(1).mean()
        beta = self.kl_weight()
        loss = self.bpd(recon.mean() + beta * kl_term)
        kl = kls.sum(1)
        metrics = {
            "bpd": self.bpd((recon + kl).mean().detach()),
            "elbo": -(recon + kl).mean().detach(),
            "recon": recon.mean().detach(),
            "kl": kl.mean().detach(),
            "beta": beta.detach(),
        }
        for group in range(self.num_groups):  # group 1 is the top one
            metrics[f"kl_group{group + 1}"] = kls[:, group].mean().detach()
        return Output(loss=loss, metrics=metrics)

    def log_weights(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z), log p(z) and log q(z|x), each (B, k), for k draws z ~ q(z|x)."""
        b = x.shape[0]
        features = [d.repeat_interleave(k, dim=0) for d in self.bottom_up(x)]
        passes = self.top_down(features, b * k)
        log_px_z = self.likelihood.log_prob(passes["params"], self._targets(x, k))
        log_p = torch.stack(passes["log_p"]).sum(0)
        log_q = torch.stack(passes["log_q"]).sum(0)
        return log_px_z.view(b, k), log_p.view(b, k), log_q.view(b, k)

    def importance_weighted(self, x: Tensor, k: int) -> dict[str, Tensor]:
        """Per-example nll / bpd from the IW bound with k samples; elbo, recon and kl (the
        Monte Carlo KL of the same draws), streamed in chunks so thousands of samples fit."""
        b = x.shape[0]
        per_sample = self.likelihood.num_channels * self.image_shape[1] * self.image_shape[2]
        chunk = max(1, min(k, self.iw_chunk_elements // max(1, per_sample * b)))
        log_sum = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
        recon = torch.zeros(b, dtype=torch.float64, device=x.device)
        kl = torch.zeros_like(recon)
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            log_px_z, log_p, log_q = (t.double() for t in self.log_weights(x, n))
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_px_z + log_p - log_q, dim=1))
            recon -= log_px_z.sum(1)
            kl += (log_q - log_p).sum(1)
        recon, kl = recon / k, kl / k
        nll = -(log_sum - math.log(k))
        return {"nll": nll, "bpd": self.bpd(nll), "elbo": -(recon + kl), "recon": recon, "kl": kl}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        return self.importance_weighted(x, self.iw_samples)

    def log_prob(self, x: Tensor) -> Tensor:
        """The importance-weighted estimate of log p(x) with ``iw_samples`` samples."""
        return -self.importance_weighted(x, self.iw_samples)["nll"].to(self.h_top.dtype)

    # -- sampling, encoding ------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        params = self.top_down(None, n, temperature)["params"]
        return self.likelihood.sample(params).reshape(n, *self.event_shape)

    def encode(self, x: Tensor) -> Tensor:
        """Every group's posterior mean, top group first, concatenated (B, groups * latents)."""
        passes = self.top_down(self.bottom_up(x), x.shape[0], use_means=True)
        return torch.cat(passes["z"], dim=1)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean image for latents laid out as ``encode`` gives them."""
        latents = list(z.to(self.h_top.dtype).split(self.latent_features, dim=1))
        params = self.top_down(None, z.shape[0], latents=latents)["params"]
        return self.likelihood.mean(params).reshape(z.shape[0], *self.event_shape)


def check_groups(num_groups) -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"model.num_groups must be a positive integer, got {num_groups}")
