"""The discretized logistic mixture likelihood of PixelCNN++, with colour channels in order.

References: Salimans et al., 2017, "PixelCNN++", arXiv:1701.05517 (section 2.1-2.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def num_parameters(channels: int, components: int) -> int:
    """Mixture logits, then per channel a mean and a log-scale per component, then the
    coefficients of the linear dependence of each channel's mean on earlier channels."""
    return components * (1 + 2 * channels + channels * (channels - 1) // 2)


def _split(params: Tensor, channels: int, components: int):
    """(B, P, H, W) -> logit_pi (B, K, H, W), means, log_scales (B, C, K, H, W), coeffs (B, C(C-1)/2, K, H, W)."""
    b, _, *spatial = params.shape
    k = components
    logit_pi = params[:, :k]
    rest = params[:, k:].reshape(b, -1, k, *spatial)
    means, log_scales = rest[:, :channels], rest[:, channels : 2 * channels]
    coeffs = torch.tanh(rest[:, 2 * channels :])
    return logit_pi, means, log_scales.clamp(min=-7.0), coeffs


def _conditional_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
    """mu_c += sum_{c' < c} coeff * x_c' (G depends on R; B on R and G)."""
    channels = means.shape[1]
    out = [means[:, 0]]
    pair = 0
    for c in range(1, channels):
        mu = means[:, c]
        for earlier in range(c):
            mu = mu + coeffs[:, pair] * x[:, earlier].unsqueeze(1)
            pair += 1
        out.append(mu)
    return torch.stack(out, dim=1)


def log_prob(params: Tensor, x: Tensor, levels: int, components: int) -> Tensor:
    """log P(x) per example for x (B, C, H, W) of integer levels, summed over pixels.

    Each value is a bin of width 2 / (levels - 1) on [-1, 1]; the first and last bins extend
    to -inf and +inf, so the probabilities of all levels sum to one. Log-probabilities stay
    finite in the tails: log-sigmoid forms at the edges, and the log density times the bin
    width where a bin's mass underflows.
    """
    channels = x.shape[1]
    logit_pi, means, log_scales, coeffs = _split(params, channels, components)
    xs = x.to(params.dtype) * (2.0 / (levels - 1)) - 1.0  # (B, C, H, W)
    mu = _conditional_means(means, coeffs, xs)
    centred = xs.unsqueeze(2) - mu  # (B, C, K, H, W)
    inv_s = torch.exp(-log_scales)
    half_bin = 1.0 / (levels - 1)
    plus, minus = inv_s * (centred + half_bin), inv_s * (centred - half_bin)
    log_cdf_plus = F.logsigmoid(plus)  # log sigma(plus): the lowest bin
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigma(minus)): the highest bin
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)  # log density at the bin centre
    log_mass_approx = log_pdf_mid + math.log(2 * half_bin)
    log_mass = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_mass_approx)
    lowest = (x == 0).unsqueeze(2)
    highest = (x == levels - 1).unsqueeze(2)
    log_probs = torch.where(
        lowest, log_cdf_plus, torch.where(highest, log_one_minus_cdf_minus, log_mass)
    )
    log_probs = log_probs.sum(1) + F.log_softmax(
        logit_pi, dim=1
    )  # channels of a component multiply
    return torch.logsumexp(log_probs, dim=1).flatten(1).sum(1)


def sample(
    params: Tensor, levels: int, components: int, channels: int, temperature: float = 1.0
) -> Tensor:
    """One draw per pixel (B, C, H, W) of integer levels: a component, then the channels in order."""
    logit_pi, means, log_scales, coeffs = _split(params, channels, components)
    b, k, *spatial = logit_pi.shape
    gumbel = -torch.log(-torch.log(torch.rand_like(logit_pi).clamp(1e-10, 1 - 1e-10)))
    chosen = (
        F.one_hot((logit_pi / temperature + gumbel).argmax(1), k).movedim(-1, 1).to(params.dtype)
    )  # (B, K, H, W)
    xs = []
    pair = 0
    for c in range(channels):
        mu = (means[:, c] * chosen).sum(1)
        for earlier in range(c):
            mu = mu + (coeffs[:, pair] * chosen).sum(1) * xs[earlier]
            pair += 1
        log_s = (log_scales[:, c] * chosen).sum(1) + math.log(temperature)
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        value = (mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))).clamp(-1.0, 1.0)
        value = torch.round((value + 1.0) * (levels - 1) / 2.0) * (2.0 / (levels - 1)) - 1.0
        xs.append(value)
    return torch.round((torch.stack(xs, dim=1) + 1.0) * (levels - 1) / 2.0).long()
