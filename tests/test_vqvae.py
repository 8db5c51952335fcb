"""VQ-VAE (model=vqvae): the bound sums to at most one over every image, the codebook's
moving averages and restarts, the straight-through gradient, the commitment term."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genflow.models.vqvae import VQVAE, Codebook


def tiny(shape=(1, 2, 2), levels=2, **extra) -> VQVAE:
    kwargs = dict(
        num_codes=4,
        code_dim=3,
        hidden_channels=8,
        num_blocks=1,
        downsample=1,
        prior_hidden_channels=8,
        prior_layers=2,
    )
    return VQVAE(shape, levels, **{**kwargs, **extra})


def every_image() -> torch.Tensor:
    """All 16 binary 2x2 images."""
    return torch.tensor(list(itertools.product((0, 1), repeat=4))).view(16, 1, 2, 2)


def test_the_bound_sums_to_at_most_one_over_every_image_and_its_terms_are_needed():
    """exp(log_prob) is a lower bound on p(x) of a proper model, so its sum over all 16
    binary 2x2 images is at most 1. After fitting them, the reconstruction term alone sums to
    well over 1: a bound without the prior's log p(k) would not be one."""
    torch.manual_seed(0)
    model = tiny(num_codes=8)
    x = every_image()
    model.initialize(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model(x).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        recon, prior, *_ = model.terms(x)
        bound = model.log_prob(x)
    assert torch.allclose(bound, recon + prior)
    assert float(torch.logsumexp(bound, 0)) <= 0.0
    assert float(torch.logsumexp(recon, 0)) > math.log(2.0)  # the prior term matters
    assert bool((prior < 0).all()) and bool((recon < 0).all())
    metrics = model.evaluate(x)
    assert torch.allclose(metrics["nll"], -bound)
    assert torch.allclose(metrics["bpd"], -bound / (4 * math.log(2)))


def test_the_codebook_moving_averages_by_hand():
    book = Codebook(3, 2, decay=0.9, restart_below=0.0)
    book.codes.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    book.counts.copy_(torch.tensor([2.0, 2.0, 2.0]))
    book.sums.copy_(book.codes * 2.0)
    z = torch.tensor([[0.1, 0.0], [0.9, 1.2], [1.1, 0.8], [4.0, 6.0]])
    index = book.nearest(z)
    assert index.tolist() == [0, 1, 1, 2]
    book.update(z, index)
    counts = torch.tensor([0.9 * 2 + 0.1 * 1, 0.9 * 2 + 0.1 * 2, 0.9 * 2 + 0.1 * 1])
    sums = torch.stack(
        [
            0.9 * torch.tensor([0.0, 0.0]) + 0.1 * z[0],
            0.9 * torch.tensor([2.0, 2.0]) + 0.1 * (z[1] + z[2]),
            0.9 * torch.tensor([10.0, 10.0]) + 0.1 * z[3],
        ]
    )
    total = counts.sum()
    smoothed = (counts + book.eps) / (total + 3 * book.eps) * total
    torch.testing.assert_close(book.counts, counts)
    torch.testing.assert_close(book.sums, sums)
    torch.testing.assert_close(book.codes, sums / smoothed.unsqueeze(1))


def test_a_code_nobody_chooses_is_restarted_at_an_encoder_output():
    torch.manual_seed(0)
    book = Codebook(2, 2, decay=0.5, restart_below=1.0)
    book.codes.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    book.counts.copy_(torch.tensor([4.0, 1.5]))
    book.sums.copy_(book.codes * book.counts.unsqueeze(1))
    z = torch.tensor([[0.2, 0.1], [-0.1, 0.3], [0.0, -0.2], [0.1, 0.1]])
    restarted = book.update(z, book.nearest(z))
    assert int(restarted) == 1  # code 1's count fell to 0.75 < 1
    assert any(torch.equal(book.codes[1], row) for row in z)
    assert float(book.counts[1]) == 1.0 and torch.equal(book.sums[1], book.codes[1])


def test_gradients_pass_the_quantisation_straight_through_and_commitment_pulls_the_encoder():
    """The decoder's input gradient reaches z_e unchanged; the commitment term adds
    2 * commitment * (z_e - z_q) per example."""
    torch.manual_seed(1)
    model = tiny(commitment=0.0)
    x = every_image()[:5]
    model.initialize(x)
    seen = {}
    hooks = [
        model.encoder.register_forward_hook(
            lambda m, i, out: seen.update(z_e=out) or out.retain_grad()
        ),
        model.decoder.register_forward_pre_hook(
            lambda m, i: seen.update(z_in=i[0]) or i[0].retain_grad()
        ),
    ]
    model(x).loss.backward()  # the model's own training step: no commitment, prior detached
    for hook in hooks:
        hook.remove()
    assert seen["z_e"].grad is not None and float(seen["z_e"].grad.abs().sum()) > 0
    torch.testing.assert_close(seen["z_e"].grad, seen["z_in"].grad)
    model.zero_grad()
    for commitment in (0.0, 0.7):
        model.commitment = commitment
        with torch.no_grad():
            model.eval()
            _, _, commit, z, idx = model.terms(x)
            _, z_q = model.quantize(z)
        torch.testing.assert_close(commit, (z - z_q).pow(2).flatten(1).sum(1))
    model.train()
    model.commitment = 0.5
    loss_with = model(x).loss
    model.commitment = 0.0
    loss_without = model(x).loss
    with torch.no_grad():
        _, _, commit, *_ = model.terms(x)
    expected = 0.5 * commit.mean() / (4 * math.log(2))
    torch.testing.assert_close(loss_with - loss_without, expected, rtol=1e-4, atol=1e-6)


def test_samples_and_reconstructions_are_images_of_the_data_levels():
    torch.manual_seed(2)
    model = tiny((1, 8, 8), 17, num_codes=8, code_dim=4).eval()
    x = torch.randint(0, 17, (6, 1, 8, 8))
    model.initialize(x)
    samples = model.sample(5, temperature=0.9)
    assert samples.shape == (5, 1, 8, 8) and int(samples.min()) >= 0 and int(samples.max()) <= 16
    rebuilt = model.decode(model.encode(x))
    assert rebuilt.shape == x.shape and int(rebuilt.max()) <= 16
    assert model.encode(x).shape == (6, 4, 4, 4)  # a 4x4 grid of 4-wide vectors
    images, per_row, _ = model.pictures(x)["reconstructions"]
    assert images.shape == (12, 1, 8, 8) and per_row == 6


def test_a_grid_the_downsampling_cannot_halve_is_refused():
    with pytest.raises(ValueError, match="model.downsample=2 halves 6x6 images"):
        VQVAE((1, 6, 6), 2, downsample=2)
