"""VQ-VAE (van den Oord et al., 2017, arXiv:1711.00937) with a Gated PixelCNN prior over its
code grid, trained in one run.

The encoder maps x to a grid of vectors z_e; each is replaced by its nearest codebook vector
e_k (z_q), and the decoder gives p(x | z_q) with one of the VAEs' discrete likelihoods. The
codebook follows the encoder by exponential moving averages of the vectors assigned to each
code (appendix A.1 of the paper), with codes nobody chose restarted at encoder outputs of the
batch; the encoder is pulled towards its codes by the commitment term
``commitment * ||z_e - sg(z_q)||^2``; gradients pass the quantisation straight through.

The prior p(k) over the grid of code indices is one of genflow's autoregressive models (Gated
PixelCNN), trained from the first step on the current codes (detached: it never moves the
encoder). With the encoder's one-hot q(k | x), the ELBO is

    log p(x) >= log p(x | z_q(x)) + log p(k(x)),

since q has no entropy: evaluation's ``nll`` is minus this bound (an upper bound on -log p(x),
never an estimate of it), and ``recon_nll`` and ``prior_nll`` are its two terms.
``genflow sample`` draws codes from the prior and pixels from p(x | z_q).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.distributions.likelihoods import build_likelihood
from genflow.models.base import GenerativeModel, Output
from genflow.models.gated_pixelcnn import GatedPixelCNN
from genflow.nn.resnet import ResidualBlock


class Codebook(nn.Module):
    """K code vectors of width D, kept by exponential moving averages (buffers, not
    parameters): per code, the decayed count of the vectors assigned to it (``counts``) and
    their decayed sum (``sums``); the code is their ratio, with Laplace smoothing of the
    counts. A code whose decayed count falls below ``restart_below`` is restarted at a random
    encoder output of the batch."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, restart_below: float = 1.0):
        super().__init__()
        self.num_codes, self.dim, self.decay = num_codes, dim, decay
        self.restart_below, self.eps = restart_below, 1e-5
        self.register_buffer("codes", torch.randn(num_codes, dim))
        self.register_buffer("counts", torch.ones(num_codes))
        self.register_buffer("sums", self.codes.clone())

    def nearest(self, z: Tensor) -> Tensor:
        """The index of the nearest code of each row of ``z`` (N, D), by Euclidean distance."""
        distances = (
            z.pow(2).sum(1, keepdim=True)
            - 2 * z @ self.codes.t()
            + self.codes.pow(2).sum(1).unsqueeze(0)
        )
        return distances.argmin(1)

    @torch.no_grad()
    def initialize(self, z: Tensor) -> None:
        """Codes at distinct random rows of ``z`` (N, D) (with repeats when N < K)."""
        pick = torch.randint(len(z), (self.num_codes,), device=z.device)
        pick[: min(len(z), self.num_codes)] = torch.randperm(len(z), device=z.device)[
            : self.num_codes
        ]
        self.codes.copy_(z[pick])
        self.counts.fill_(len(z) / self.num_codes)  # as if every code had its share
        self.sums.copy_(self.codes * self.counts.unsqueeze(1))

    @torch.no_grad()
    def update(self, z: Tensor, index: Tensor) -> Tensor:
        """One moving-average step from the rows ``z`` (N, D) assigned to codes ``index``;
        returns how many codes were restarted (a tensor: no host sync)."""
        one_hot = F.one_hot(index, self.num_codes).to(z.dtype)
        self.counts.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(one_hot.t() @ z, alpha=1 - self.decay)
        total = self.counts.sum()
        smoothed = (self.counts + self.eps) / (total + self.num_codes * self.eps) * total
        self.codes.copy_(self.sums / smoothed.unsqueeze(1))
        dead = (self.counts < self.restart_below).unsqueeze(1)
        fresh = z[torch.randint(len(z), (self.num_codes,), device=z.device)]
        self.codes.copy_(torch.where(dead, fresh, self.codes))
        self.sums.copy_(torch.where(dead, fresh, self.sums))
        self.counts.copy_(torch.where(dead[:, 0], torch.ones_like(self.counts), self.counts))
        return dead.sum()


def _encoder(channels: int, hidden: int, dim: int, downsample: int, blocks: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = channels
    for _ in range(downsample):
        layers += [nn.Conv2d(width, hidden, 4, stride=2, padding=1), nn.ReLU()]
        width = hidden
    layers += [nn.Conv2d(width, hidden, 3, padding=1)]
    layers += [ResidualBlock(hidden, activation="relu") for _ in range(blocks)]
    layers += [nn.ReLU(), nn.Conv2d(hidden, dim, 1)]
    return nn.Sequential(*layers)


def _decoder(
    dim: int, hidden: int, out: int, downsample: int, blocks: int, dropout: float
) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(dim, hidden, 3, padding=1)]
    layers += [ResidualBlock(hidden, dropout, activation="relu") for _ in range(blocks)]
    layers += [nn.ReLU()]
    for _ in range(downsample):
        layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(hidden, out, 3, padding=1)]
    return nn.Sequential(*layers)


class VQVAE(GenerativeModel):
    """A VQ-VAE of images with a Gated PixelCNN prior over its codes (see the module
    docstring for the bound it is scored by)."""

    image_only = True
    discrete_only = True
    can_encode = True
    eval_metrics = ("nll", "bpd", "recon_nll", "prior_nll")

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        num_codes: int = 16,
        code_dim: int = 16,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        downsample: int = 1,
        commitment: float = 0.25,
        dropout: float = 0.0,
        decay: float = 0.99,
        restart_below: float = 1.0,
        likelihood: str = "auto",
        num_mixtures: int = 5,
        prior_hidden_channels: int = 64,
        prior_layers: int = 6,
        prior_kernel_size: int = 3,
        prior_dropout: float = 0.0,
    ):
        super().__init__(event_shape, levels)
        c, h, w = self.check_shape(self.event_shape, downsample)
        if num_codes < 2 or code_dim < 1:
            raise ValueError(
                f"model.num_codes must be >= 2 and model.code_dim >= 1, got {num_codes} and "
                f"{code_dim}"
            )
        if not 0 < decay < 1:
            raise ValueError(f"model.decay must be in (0, 1), got {decay}")
        if commitment < 0:
            raise ValueError(f"model.commitment must be >= 0, got {commitment}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.commitment = float(commitment)
        self.grid = (h >> downsample, w >> downsample)
        self.likelihood = build_likelihood(likelihood, (c, h, w), levels, num_mixtures)
        self.encoder = _encoder(c, hidden_channels, code_dim, downsample, num_blocks)
        self.decoder = _decoder(
            code_dim, hidden_channels, self.likelihood.num_channels, downsample, num_blocks, dropout
        )
        self.codebook = Codebook(num_codes, code_dim, decay, restart_below)
        self.prior = GatedPixelCNN(
            (1, *self.grid),
            num_codes,
            hidden_channels=prior_hidden_channels,
            num_layers=prior_layers,
            kernel_size=prior_kernel_size,
            dropout=prior_dropout,
        )

    @staticmethod
    def check_shape(shape: tuple[int, ...], downsample: int) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise ValueError(f"model=vqvae models images (C, H, W); the data have shape {shape}")
        c, h, w = shape
        if downsample < 0 or h % (1 << downsample) or w % (1 << downsample):
            raise ValueError(
                f"model.downsample={downsample} halves {h}x{w} images {downsample} times; "
                f"it must divide both sides evenly (2**downsample)"
            )
        return c, h, w

    @staticmethod
    def check_config(model_cfg) -> None:
        GenerativeModel.check_config(model_cfg)
        shape = tuple(int(s) for s in model_cfg.event_shape)
        VQVAE.check_shape(shape, int(model_cfg.get("downsample", 1)))

    # -- the pieces ------------------------------------------------------------------------
    def scale(self, x: Tensor) -> Tensor:
        """Levels -> [-1, 1], the encoder's input."""
        dtype = next(self.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.levels - 1)) - 1.0

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of a grid (B, D, h, w): the code indices (B, 1, h, w) and their
        vectors (B, D, h, w)."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        index = self.codebook.nearest(flat)
        z_q = self.codebook.codes[index].view(b, h, w, d).permute(0, 3, 1, 2)
        return index.view(b, 1, h, w), z_q

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """log p(x | z_q), log p(k), the commitment distance per example, z_e and the codes."""
        z_e = self.encoder(self.scale(x))
        index, z_q = self.quantize(z_e)
        decoded = self.decoder(z_e + (z_q - z_e).detach())  # straight through
        recon = self.likelihood.log_prob(decoded, x)
        prior = self.prior.log_prob(index)
        commit = (z_e - z_q.detach()).pow(2).flatten(1).sum(1)
        return recon, prior, commit, z_e, index

    # -- the contract ----------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        self.labels(len(x), y, x.device)
        recon, prior, commit, z_e, index = self.terms(x)
        restarted = torch.zeros((), device=x.device)
        if self.training:
            d = z_e.shape[1]
            restarted = self.codebook.update(
                z_e.detach().permute(0, 2, 3, 1).reshape(-1, d), index.flatten()
            )
        nll = -(recon + prior)
        per_dim = self.num_dims * math.log(2)
        loss = (nll + self.commitment * commit).mean() / per_dim
        used = torch.bincount(index.flatten(), minlength=self.codebook.num_codes).float()
        p = used / used.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        metrics = {
            "nll": nll.mean().detach(),
            "bpd": self.bpd(nll).mean().detach(),
            "recon_nll": -recon.mean().detach(),
            "prior_nll": -prior.mean().detach(),
            "commitment": commit.mean().detach(),
            "perplexity": perplexity.detach(),
            "restarted_codes": restarted.float(),
        }
        return Output(loss=loss, metrics=metrics)

    def log_prob(self, x: Tensor) -> Tensor:
        """The ELBO log p(x | z_q(x)) + log p(k(x)): a lower bound on log p(x)."""
        recon, prior, *_ = self.terms(x)
        return recon + prior

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        self.labels(len(x), y, x.device)
        recon, prior, *_ = self.terms(x)
        nll = -(recon + prior)
        return {"nll": nll, "bpd": self.bpd(nll), "recon_nll": -recon, "prior_nll": -prior}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        """Codes from the prior (at ``temperature``), then pixels from p(x | z_q)."""
        self.labels(n, y, next(self.parameters()).device)
        index = self.prior.sample(n, temperature)
        return self.likelihood.sample(self.decoder(self.vectors(index)))

    def vectors(self, index: Tensor) -> Tensor:
        """Code indices (B, 1, h, w) -> their vectors (B, D, h, w)."""
        return self.codebook.codes[index[:, 0].long()].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The encoder's output z_e (before quantisation): a space to interpolate in."""
        return self.encoder(self.scale(x))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) quantised, then p(x | z_q)'s mean, rounded to levels."""
        _, z_q = self.quantize(z)
        mean = self.likelihood.mean(self.decoder(z_q))
        return mean.round().clamp(0, self.levels - 1).long()

    @torch.no_grad()
    def initialize(self, batch: Tensor, y: Tensor | None = None) -> None:
        """The codebook at encoder outputs of the first batch (no code starts unused)."""
        z_e = self.encoder(self.scale(batch))
        self.codebook.initialize(z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, tuple]:
        n = min(len(x), 32)
        shown = x[:n]
        rebuilt = self.decode(self.encode(shown))
        grid = torch.cat([shown.long(), rebuilt]).to(torch.long)
        return {
            "reconstructions": (
                grid,
                n,
                "validation images (top) and their reconstructions through the codes (bottom)",
            )
        }
