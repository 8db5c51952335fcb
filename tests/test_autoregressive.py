"""Autoregressive models: causality by autograd, exact likelihoods, cached == naive sampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import perturbed

from genflow.models.gated_pixelcnn import GatedPixelCNN
from genflow.models.pixelcnn import PixelCNN
from genflow.models.pixelcnnpp import PixelCNNpp
from genflow.models.pixelrnn import PixelRNN, skew, unskew
from genflow.models.wavenet import WaveNet
from genflow.nn.causal_conv import CausalConv1d
from genflow.nn.masked_conv import MaskedConv2d


def _order_index(shape):
    """Position in the sampling order of every entry of a (C, H, W) event: raster, then channel."""
    c, h, w = shape
    ch, i, j = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    return (i * w + j) * c + ch


def _dependency(model_logits, x_scaled_shape, order, make_input):
    """d logits[k] / d input[m] != 0 only where order[m] < order[k]."""
    inp = torch.randn(1, *x_scaled_shape, dtype=torch.float64, requires_grad=True)
    flat_out = model_logits(make_input(inp)).sum(1)[0].reshape(-1)  # sum over levels
    jacobian = torch.stack(
        [
            torch.autograd.grad(flat_out[k], inp, retain_graph=True)[0].reshape(-1)
            for k in range(flat_out.numel())
        ]
    )
    order = order.reshape(-1)
    forbidden = order[None, :] >= order[:, None]
    assert (jacobian[forbidden] == 0).all()
    assert (jacobian[~forbidden] != 0).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelcnn_is_causal_in_raster_and_colour_order(channels):
    shape = (channels, 5, 5)
    model = perturbed(PixelCNN(shape, levels=4, hidden_channels=12, num_layers=2).double(), 0.3)

    def logits_of_scaled(v):  # the network on a continuous input, to take gradients
        h = model.input(v)
        for block in model.blocks:
            h = block(h)
        return model._to_logits(model.head_out(torch.relu(model.head_hidden(torch.relu(h)))))

    _dependency(logits_of_scaled, shape, _order_index(shape), lambda v: v)


def _pixelrnn(variant, shape, levels=4, layers=2, hidden=6):
    model = PixelRNN(shape, levels, variant, hidden_channels=hidden, num_layers=layers)
    return perturbed(model.double(), 0.3)


def _pixelrnn_logits_of_scaled(model):
    def logits(v):  # the network on a continuous input, to take gradients
        h = model.input(v)
        for layer in model.layers:
            h = layer(h)
        return model._to_logits(model._head(h))

    return logits


@pytest.mark.parametrize("variant", ["row_lstm", "diagonal_bilstm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixelrnn_is_causal_in_raster_and_colour_order(variant, channels):
    shape = (channels, 5, 5)
    model = _pixelrnn(variant, shape, hidden=5)  # units split 2, 2, 1 among R, G, B
    _dependency(_pixelrnn_logits_of_scaled(model), shape, _order_index(shape), lambda v: v)


def _hidden_earlier_pixels(variant, shape, pixel):
    """The earlier pixels the logits at ``pixel`` do not depend on (one layer)."""
    model = _pixelrnn(variant, shape, layers=1)
    v = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    out = _pixelrnn_logits_of_scaled(model)(v).sum(1)[0, 0]
    grad = torch.autograd.grad(out[pixel], v)[0][0, 0]
    _, h, w = shape
    before = lambda a, b: a * w + b < pixel[0] * w + pixel[1]  # noqa: E731
    return {(a, b) for a in range(h) for b in range(w) if before(a, b) and grad[a, b] == 0}


def test_diagonal_bilstm_sees_the_whole_context_and_the_row_lstm_a_triangle():
    """One Diagonal BiLSTM layer sees every earlier pixel (no blind spot), but for the last
    pixel of the row above from the first columns: after the mask-A 7x7 input convolution
    that value reaches the stream only from column W - 4 of the next row on. One Row LSTM
    layer sees a triangle: the top right of the rows above and the far left of its own row
    stay hidden."""
    shape = (1, 4, 9)
    assert _hidden_earlier_pixels("diagonal_bilstm", shape, (3, 6)) == set()
    assert _hidden_earlier_pixels("diagonal_bilstm", shape, (2, 0)) == {(1, 8)}
    row = _hidden_earlier_pixels("row_lstm", shape, (2, 0))
    assert {(0, 5), (0, 8), (1, 4), (1, 8)} <= row
    assert _hidden_earlier_pixels("row_lstm", shape, (3, 6)) == {(2, 0), (3, 0), (3, 1)}


def test_skew_shifts_each_row_right_by_its_index_and_unskew_inverts_it():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    skewed = skew(x)
    assert skewed.shape == (1, 1, 3, 6)
    for r in range(3):
        assert torch.equal(skewed[0, 0, r, r : r + 4], x[0, 0, r])
        assert skewed[0, 0, r].count_nonzero() == (4 if r else 3)  # x[0, 0, 0, 0] is 0
    assert torch.equal(unskew(skewed, 4), x)


@pytest.mark.parametrize("variant", ["row_lstm", "diagonal_bilstm"])
def test_pixelrnn_row_by_row_recurrence_equals_the_whole_image_pass(variant):
    """The sampler's row step (each layer's state carried from the row above) gives the
    training pass's logits, for grey and colour images."""
    import torch.nn.functional as F

    for shape in ((1, 5, 6), (3, 4, 4)):
        model = _pixelrnn(variant, shape)
        images = torch.randint(0, 4, (3, *shape))
        pad = model.input.kernel_size[0] // 2
        padded = F.pad(model.scale(images), (pad,) * 4)
        first = torch.zeros(3, 12, shape[2], dtype=torch.float64)
        above = [layer.initial_state(first) for layer in model.layers]
        rows = []
        for r in range(shape[1]):
            logits, above = model._row(padded, r, above, [None] * 3)
            rows.append(logits)
        torch.testing.assert_close(torch.stack(rows, dim=3), model.logits(images))


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_pixelcnn_is_causal_in_raster_and_colour_order(channels):
    shape = (channels, 5, 5)
    model = GatedPixelCNN(shape, 4, hidden_channels=6, num_layers=3)
    model = perturbed(model.double(), 0.3)
    _dependency(model._logits_of_scaled, shape, _order_index(shape), lambda v: v)


def test_gated_pixelcnn_has_no_blind_spot_where_pixelcnn_has_one():
    """At (3, 2) of a 6x6 image, four gated layers see every earlier pixel; a PixelCNN of the
    same depth and kernel misses the triangle above and to the right ((1, 5), (2, 4), (2, 5)),
    though it lies within its kernels' reach: the blind spot the two stacks remove."""
    shape, pixel = (1, 6, 6), (3, 2)

    def hidden(logits_of_scaled):
        v = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
        grad = torch.autograd.grad(logits_of_scaled(v).sum(1)[0, 0][pixel], v)[0][0, 0]
        return {(a, b) for a in range(6) for b in range(6) if a * 6 + b < 20 and grad[a, b] == 0}

    gated = perturbed(GatedPixelCNN(shape, 4, hidden_channels=6, num_layers=4).double(), 0.3)
    assert hidden(gated._logits_of_scaled) == set()
    plain = PixelCNN(shape, 4, hidden_channels=8, num_layers=4, first_kernel_size=3)
    plain = perturbed(plain.double(), 0.3)

    def plain_logits(v):
        h = plain.input(v)
        for block in plain.blocks:
            h = block(h)
        return plain._to_logits(plain.head_out(torch.relu(plain.head_hidden(torch.relu(h)))))

    assert hidden(plain_logits) == {(1, 5), (2, 4), (2, 5)}


def test_wavenet_is_causal():
    torch.manual_seed(0)
    model = perturbed(
        WaveNet(
            (10,), levels=5, residual_channels=8, skip_channels=8, layers_per_block=3, num_blocks=2
        ).double(),
        0.3,
    )

    def logits_from_embeddings(e):  # bypass the integer embedding to take gradients
        h = torch.nn.functional.pad(e, (1, 0))[:, :, :-1]
        skips = 0.0
        for dilated, residual, skip in zip(model.dilated, model.residual, model.skip, strict=True):
            a, g = dilated(h).chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(g)
            skips, h = skips + skip(z), h + residual(z)
        return model.head(skips)

    inp = torch.randn(1, 8, 10, dtype=torch.float64, requires_grad=True)
    out = logits_from_embeddings(inp).sum(1)[0]
    sees_the_past = []
    for t in range(10):
        grad = torch.autograd.grad(out[t], inp, retain_graph=True)[0][0].abs().sum(0)
        assert (grad[t:] == 0).all(), t  # never the present or the future
        sees_the_past.append(bool((grad[:t] != 0).any()))
    # a ReLU head can be all-inactive at a position (zero gradient there), so the converse is
    # checked over positions rather than at each one
    assert sum(sees_the_past[1:]) >= 5


def test_masks_and_causal_conv_shapes():
    mask = MaskedConv2d(3, 6, 3, "A", color_groups=3).mask
    assert mask[:, :, 2, :].sum() == 0 and mask[:, :, 1, 2].sum() == 0  # nothing below or right
    assert (
        mask[0:2, :, 1, 1].sum() == 0
        and mask[2:4, 0, 1, 1].sum() == 2
        and mask[4:6, 0:2, 1, 1].sum() == 4
    )
    conv = CausalConv1d(2, 3, kernel_size=2, dilation=4)
    assert conv(torch.randn(1, 2, 9)).shape == (1, 3, 9) and conv.history == 5


@pytest.mark.parametrize(
    "name",
    [
        "pixelcnn_grey",
        "pixelcnn_colour",
        "wavenet",
        "row_lstm_grey",
        "row_lstm_colour",
        "diagonal_bilstm_grey",
        "diagonal_bilstm_colour",
        "gated_grey",
        "gated_colour",
        "gated_colour_k5",
        "pixelcnn_colour_classes",
        "wavenet_classes",
        "gated_colour_classes",
        "diagonal_bilstm_colour_classes",
        "pixelcnnpp_grey",
        "pixelcnnpp_colour",
        "pixelcnnpp_grey_3_resolutions",
        "pixelcnnpp_colour_classes",
    ],
)
def test_cached_and_naive_samplers_give_identical_samples(name):
    torch.manual_seed(0)
    model = {
        "pixelcnn_grey": lambda: PixelCNN((1, 6, 5), levels=5, hidden_channels=12, num_layers=2),
        "pixelcnn_colour": lambda: PixelCNN((3, 4, 4), levels=4, hidden_channels=12, num_layers=2),
        "wavenet": lambda: WaveNet(
            (2, 4, 3), levels=6, residual_channels=8, skip_channels=8, layers_per_block=3
        ),
        "row_lstm_grey": lambda: PixelRNN((1, 6, 5), 5, "row_lstm", 6, 2),
        "row_lstm_colour": lambda: PixelRNN((3, 4, 4), 4, "row_lstm", 6, 2),
        "diagonal_bilstm_grey": lambda: PixelRNN((1, 6, 5), 5, "diagonal_bilstm", 6, 2),
        "diagonal_bilstm_colour": lambda: PixelRNN((3, 4, 4), 4, "diagonal_bilstm", 6, 2),
        "gated_grey": lambda: GatedPixelCNN((1, 6, 5), 5, hidden_channels=6, num_layers=3),
        "gated_colour": lambda: GatedPixelCNN((3, 4, 4), 4, hidden_channels=6, num_layers=3),
        "gated_colour_k5": lambda: GatedPixelCNN((3, 5, 4), 4, 6, num_layers=2, kernel_size=5),
        "pixelcnn_colour_classes": lambda: PixelCNN((3, 4, 4), 4, 12, 2, num_classes=3),
        "wavenet_classes": lambda: WaveNet((2, 4, 3), 6, 8, 8, layers_per_block=3, num_classes=3),
        "gated_colour_classes": lambda: GatedPixelCNN((3, 4, 4), 4, 6, 3, num_classes=3),
        "diagonal_bilstm_colour_classes": lambda: PixelRNN(
            (3, 4, 4), 4, "diagonal_bilstm", 6, 2, num_classes=3
        ),
        # PixelCNN++: a U-Net of num_resolutions sizes, each a multiple of 2 ** (levels - 1)
        "pixelcnnpp_grey": lambda: PixelCNNpp((1, 8, 6), 5, 6, num_resnet=2, num_mixtures=3),
        "pixelcnnpp_colour": lambda: PixelCNNpp((3, 4, 4), 4, 6, num_resnet=2, num_mixtures=3),
        "pixelcnnpp_grey_3_resolutions": lambda: PixelCNNpp(
            (1, 8, 8), 5, 6, num_resnet=1, num_resolutions=3, num_mixtures=3
        ),
        "pixelcnnpp_colour_classes": lambda: PixelCNNpp((3, 8, 4), 4, 6, 1, num_classes=3),
    }[name]()
    model = perturbed(model, 0.3).double().eval()
    # the conditional models: each image with its own class, every class present
    y = torch.tensor([0, 1, 2, 2, 1, 0]) if model.num_classes else None
    torch.manual_seed(7)
    naive = model.sample_naive(6, temperature=0.9, y=y)
    torch.manual_seed(7)
    cached = model.sample_cached(6, temperature=0.9, y=y)
    assert torch.equal(naive, cached)
    assert naive.unique().numel() > 1  # not a degenerate constant sample


@pytest.mark.parametrize(
    "name", ["pixelcnn", "wavenet", "row_lstm", "diagonal_bilstm", "gated_pixelcnn"]
)
def test_exact_probabilities_sum_to_one(name):
    """All 3^4 images of a 1x2x2, 3-level model: sum_x p(x) = 1 exactly (no bound involved)."""
    import itertools

    torch.manual_seed(0)
    model = {
        "pixelcnn": lambda: PixelCNN((1, 2, 2), levels=3, hidden_channels=8, num_layers=1),
        "wavenet": lambda: WaveNet(
            (1, 2, 2), levels=3, residual_channels=8, skip_channels=8, layers_per_block=2
        ),
        "row_lstm": lambda: PixelRNN((1, 2, 2), 3, "row_lstm", 4, 2),
        "diagonal_bilstm": lambda: PixelRNN((1, 2, 2), 3, "diagonal_bilstm", 4, 2),
        "gated_pixelcnn": lambda: GatedPixelCNN((1, 2, 2), 3, hidden_channels=4, num_layers=2),
    }[name]()
    model = perturbed(model, 0.3).double()
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    total = model.log_prob(images).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))
    bpd = model.evaluate(images)["bpd"]
    torch.testing.assert_close(bpd, -model.log_prob(images) / (4 * math.log(2)))


def _random_mixture_params(channels, components, size, generator, spread=1.0):
    from genflow.distributions.discretized_logistic import num_parameters

    p = num_parameters(channels, components)
    return spread * torch.randn(size, p, 1, 1, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("spread", [0.5, 3.0])
def test_discretized_logistic_mixture_sums_to_one_over_256_values(spread):
    from genflow.distributions import discretized_logistic as dlm

    generator = torch.Generator().manual_seed(0)
    params = _random_mixture_params(1, 5, 20, generator, spread)  # 20 random pixels
    values = torch.arange(256).view(256, 1, 1, 1)
    for pixel in params:
        log_p = dlm.log_prob(pixel.expand(256, -1, 1, 1), values, levels=256, components=5)
        torch.testing.assert_close(
            log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0
        )


def test_discretized_logistic_mixture_with_colour_dependence_sums_to_one():
    import itertools

    from genflow.distributions import discretized_logistic as dlm

    generator = torch.Generator().manual_seed(1)
    values = torch.tensor(list(itertools.product(range(8), repeat=3))).view(-1, 3, 1, 1)
    for pixel in _random_mixture_params(3, 3, 5, generator, 1.5):
        log_p = dlm.log_prob(pixel.expand(len(values), -1, 1, 1), values, levels=8, components=3)
        torch.testing.assert_close(
            log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0
        )


def test_discretized_logistic_is_finite_at_the_edges_and_in_the_tails():
    from genflow.distributions import discretized_logistic as dlm

    params = torch.zeros(4, dlm.num_parameters(1, 1), 1, 1, dtype=torch.float64)
    params[:, 1, 0, 0] = torch.tensor([-30.0, 30.0, 0.0, 0.0])  # means far outside [-1, 1]
    params[:, 2, 0, 0] = torch.tensor([-7.0, -7.0, -7.0, 5.0])  # the tightest and a very wide scale
    params.requires_grad_(True)
    for value in (0, 1, 128, 254, 255):
        x = torch.full((4, 1, 1, 1), value)
        log_p = dlm.log_prob(params, x, levels=256, components=1)
        assert torch.isfinite(log_p).all() and (log_p <= 0).all()
        (grad,) = torch.autograd.grad(log_p.sum(), params)
        assert torch.isfinite(grad).all()


def test_pixelcnnpp_output_sees_only_earlier_pixels():
    model = perturbed(
        PixelCNNpp((2, 6, 6), levels=4, hidden_channels=6, num_resnet=1, num_resolutions=2), 0.3
    ).double()
    c, h, w = model.event_shape
    inp = torch.randn(1, c, h, w, dtype=torch.float64, requires_grad=True)
    # run the network on a continuous input (the same path as parameters_of after scaling)
    model.scale = lambda v: v  # noqa: E731 - bypass the integer scaling to take gradients
    out = model.parameters_of(inp).sum(1)[0]  # (H, W)
    for i in range(h):
        for j in range(w):
            grad = torch.autograd.grad(out[i, j], inp, retain_graph=True)[0][0].abs().sum(0)
            later = torch.zeros(h, w, dtype=torch.bool)
            later.view(-1)[i * w + j :] = True
            assert (grad[later] == 0).all(), (i, j)
            assert i + j == 0 or (grad[~later] != 0).any(), (i, j)


def test_pixelcnnpp_exact_probabilities_sum_to_one():
    import itertools

    torch.manual_seed(0)
    model = perturbed(
        PixelCNNpp((1, 2, 2), levels=3, hidden_channels=4, num_resnet=1, num_resolutions=1), 0.3
    ).double()
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    torch.testing.assert_close(
        model.log_prob(images).exp().sum(), torch.tensor(1.0, dtype=torch.float64)
    )
    sample = model.sample(3)
    assert sample.shape == (3, 1, 2, 2) and sample.min() >= 0 and sample.max() <= 2


def _conditional_arm(name):
    return {
        "pixelcnn": lambda: PixelCNN((1, 2, 2), 3, hidden_channels=8, num_layers=1, num_classes=3),
        "wavenet": lambda: WaveNet((1, 2, 2), 3, 8, 8, layers_per_block=2, num_classes=3),
        "gated_pixelcnn": lambda: GatedPixelCNN((1, 2, 2), 3, 4, num_layers=2, num_classes=3),
        "pixelcnnpp": lambda: PixelCNNpp((1, 2, 2), 3, 4, 1, 1, num_classes=3),
        "row_lstm": lambda: PixelRNN((1, 2, 2), 3, "row_lstm", 4, 2, num_classes=3),
    }[name]()


@pytest.mark.parametrize(
    "name", ["pixelcnn", "wavenet", "gated_pixelcnn", "pixelcnnpp", "row_lstm"]
)
def test_class_conditional_arms_are_a_distribution_for_every_class(name):
    """model.num_classes: p(x | y) sums to one over all 3^4 images for each class, the
    classes give different distributions, and the training loss is the conditional bpd."""
    import itertools

    torch.manual_seed(0)
    model = perturbed(_conditional_arm(name), 0.3).double()
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    per_class = []
    for label in range(3):
        y = torch.full((len(images),), label)
        log_p = model.log_prob(images, y)
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        per_class.append(log_p)
    assert (per_class[0] - per_class[1]).abs().max() > 1e-3
    assert (per_class[1] - per_class[2]).abs().max() > 1e-3
    y = torch.arange(len(images)) % 3
    mixed = torch.stack(per_class)[y, torch.arange(len(images))]
    torch.testing.assert_close(model.log_prob(images, y), mixed)  # each row its own class
    loss = model(images, y).loss
    torch.testing.assert_close(loss, -(mixed / (4 * math.log(2))).mean())
    with pytest.raises(ValueError, match="class labels must be"):
        model.sample(2, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="pass the class labels"):
        model.log_prob(images[:2])
    with pytest.raises(ValueError, match="is not conditional"):
        PixelCNN((1, 2, 2), 3, 8, 1).log_prob(images[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="is not conditional"):
        PixelRNN((1, 2, 2), 3, "row_lstm", 4, 1).sample_cached(2, y=torch.tensor([0, 1]))


def test_conditional_sampling_draws_the_requested_class():
    """Trained on digits 0 and 1 with their labels, a conditional PixelCNN's samples for each
    label are, by its own conditional likelihoods, likelier under that label than the other
    (a model that ignored the label would match about half of them)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = torch.from_numpy(digits.target < 2)
    x = torch.from_numpy(digits.images).long()[keep].view(-1, 1, 8, 8)  # values 0..16
    y = torch.from_numpy(digits.target)[keep]
    torch.manual_seed(0)
    model = PixelCNN((1, 8, 8), 17, hidden_channels=8, num_layers=1, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        model(x, y).loss.backward()
        optimizer.step()
    model.eval()
    torch.manual_seed(1)
    wanted = torch.arange(32) % 2
    drawn = model.sample(32, y=wanted)
    with torch.no_grad():
        scores = torch.stack([model.log_prob(drawn, torch.full((32,), k)) for k in range(2)])
    assert (scores.argmax(0) == wanted).float().mean() >= 0.9


CONTEXT_ARMS = ["pixelcnn", "wavenet", "gated_pixelcnn", "pixelcnnpp", "row_lstm"]


def _context_arm(name, **kw):
    return {
        "pixelcnn": lambda: PixelCNN((1, 2, 2), 3, hidden_channels=8, num_layers=1, **kw),
        "wavenet": lambda: WaveNet((1, 2, 2), 3, 8, 8, layers_per_block=2, **kw),
        "gated_pixelcnn": lambda: GatedPixelCNN((1, 2, 2), 3, 4, num_layers=2, **kw),
        "pixelcnnpp": lambda: PixelCNNpp((1, 2, 2), 3, 4, 1, 1, **kw),
        "row_lstm": lambda: PixelRNN((1, 2, 2), 3, "row_lstm", 4, 2, **kw),
    }[name]()


@pytest.mark.parametrize("name", CONTEXT_ARMS)
def test_context_conditional_arms_are_a_distribution_for_every_context(name):
    """model.context_features: p(x | c) sums to one over all 3^4 images for each context
    vector, contexts give different distributions, each row is scored under its own context,
    the context is standardised with the statistics set on the model, and the samplers agree
    given contexts."""
    import itertools

    torch.manual_seed(0)
    model = perturbed(_context_arm(name, context_features=2), 0.3).double()
    plain = copy.deepcopy(model)  # the same weights, no standardisation
    loc, scale = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])
    model.set_data_standardization(context_loc=loc, context_scale=scale)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    contexts = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0]], dtype=torch.float64)
    per_context = []
    for c in contexts:
        log_p = model.log_prob(images, c)  # one context for every image
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(log_p, plain.log_prob(images, (c - loc) / scale))
        per_context.append(log_p)
    assert (per_context[0] - per_context[1]).abs().max() > 1e-3
    assert (per_context[1] - per_context[2]).abs().max() > 1e-3
    rows = torch.arange(len(images)) % 3
    mixed = torch.stack(per_context)[rows, torch.arange(len(images))]
    torch.testing.assert_close(model.log_prob(images, contexts[rows]), mixed)
    torch.testing.assert_close(
        model(images, contexts[rows]).loss, -(mixed / (4 * math.log(2))).mean()
    )
    with pytest.raises(ValueError, match="takes 2 values per example"):
        model.log_prob(images[:2], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pass the context"):
        model.log_prob(images[:2])
    if hasattr(model, "sample_cached"):
        model.eval()
        torch.manual_seed(7)
        naive = model.sample_naive(6, temperature=0.9, y=contexts[torch.arange(6) % 3])
        torch.manual_seed(7)
        cached = model.sample_cached(6, temperature=0.9, y=contexts[torch.arange(6) % 3])
        assert torch.equal(naive, cached)


def test_an_arm_takes_a_class_or_a_context_not_both():
    with pytest.raises(ValueError, match="both condition the model"):
        PixelCNN((1, 2, 2), 3, 8, 1, num_classes=3, context_features=2)
