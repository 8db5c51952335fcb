"""PixelCNN++: shifted convolutions, gated ResNets in a U-Net, a discretized logistic mixture.

References: Salimans et al., 2017, "PixelCNN++: Improving the PixelCNN with Discretized
Logistic Mixture Likelihood and Other Modifications", arXiv:1701.05517.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.distributions import discretized_logistic as dlm
from genflow.models.arm import AutoregressiveModel
from genflow.nn.shifted_conv import (
    DownRightShiftedConv2d,
    DownRightShiftedDeconv2d,
    DownShiftedConv2d,
    DownShiftedDeconv2d,
    GatedResnet,
    buffer,
    conv_region,
    down_shift,
    interior,
    right_shift,
)
from genflow.numeric import full_precision


class PixelCNNpp(AutoregressiveModel):
    """Two streams (rows above: ``u``; above and left: ``ul``) through ``num_resolutions``
    resolutions of ``num_resnet`` gated ResNet blocks, down then up with skip connections.
    The output at a pixel sees only earlier pixels; its channels are modelled jointly by a
    mixture of ``num_mixtures`` discretized logistics with linear R -> G -> B dependence.
    With ``num_classes`` a learned class vector joins the gate inputs of every gated ResNet.

    ``sample`` is cached (Ramachandran et al., 2017, "Fast Generation for Convolutional
    Autoregressive Models", arXiv:1704.06001): every feature map is kept, the ``u`` stream
    (rows above only) is computed a row at a time when its row's inputs are known, and the
    ``ul`` stream one position at a time, at a coarse resolution only on the pixels that
    start its 2x2 (4x4, ...) cell. Each position of each map is computed once, from exactly
    the values the full pass reads, so the images equal ``sample_naive``'s for the same seed.
    """

    image_only = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        hidden_channels: int = 64,
        num_resnet: int = 2,
        num_resolutions: int = 2,
        num_mixtures: int = 5,
        dropout: float = 0.0,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        if len(self.event_shape) != 3:
            raise ValueError(
                f"PixelCNN++ models images (C, H, W); got event shape {self.event_shape}"
            )
        c, f = self.event_shape[0], hidden_channels
        self.num_mixtures, self.num_resnet, self.num_resolutions = (
            num_mixtures,
            num_resnet,
            num_resolutions,
        )
        self.u_in = DownShiftedConv2d(c + 1, f, (2, 3))
        self.ul_in_up = DownShiftedConv2d(c + 1, f, (1, 3))
        self.ul_in_left = DownRightShiftedConv2d(c + 1, f, (2, 1))

        def u_block(aux: int) -> GatedResnet:
            return GatedResnet(f, DownShiftedConv2d, aux, dropout)

        def ul_block(aux: int) -> GatedResnet:
            return GatedResnet(f, DownRightShiftedConv2d, aux, dropout)

        self.down_u = nn.ModuleList(u_block(0) for _ in range(num_resolutions * num_resnet))
        self.down_ul = nn.ModuleList(ul_block(f) for _ in range(num_resolutions * num_resnet))
        self.downsample_u = nn.ModuleList(
            DownShiftedConv2d(f, f, (2, 3), stride=2) for _ in range(num_resolutions - 1)
        )
        self.downsample_ul = nn.ModuleList(
            DownRightShiftedConv2d(f, f, (2, 2), stride=2) for _ in range(num_resolutions - 1)
        )
        up_blocks = num_resolutions * num_resnet + (num_resolutions - 1)
        self.up_u = nn.ModuleList(u_block(f) for _ in range(up_blocks))
        self.up_ul = nn.ModuleList(ul_block(2 * f) for _ in range(up_blocks))
        self.upsample_u = nn.ModuleList(
            DownShiftedDeconv2d(f, f) for _ in range(num_resolutions - 1)
        )
        self.upsample_ul = nn.ModuleList(
            DownRightShiftedDeconv2d(f, f) for _ in range(num_resolutions - 1)
        )
        self.out = nn.Conv2d(f, dlm.num_parameters(c, num_mixtures), 1)
        # per gated ResNet (down u, down ul, up u, up ul, in that order) a class vector
        blocks = 2 * num_resolutions * num_resnet + 2 * up_blocks
        self.classes = self.class_bias([2 * f] * blocks)

    def positions(self):
        """One position per pixel: the mixture draws all channels of a pixel together."""
        _, h, w = self.event_shape
        return ((i, j) for i in range(h) for j in range(w))

    def _block_classes(self, y: Tensor | None) -> tuple[list, list, list, list]:
        """The class vectors of labels ``y`` for the down u, down ul, up u and up ul blocks
        (each a list of None for an unconditional pass)."""
        vectors = self.class_vectors(y)
        down, up = len(self.down_u), len(self.up_u)
        return (
            vectors[:down],
            vectors[down : 2 * down],
            vectors[2 * down : 2 * down + up],
            vectors[2 * down + up :],
        )

    def parameters_of(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mixture parameters for every pixel, each from the pixels before it (and the class
        labels ``y`` of a conditional model)."""
        c_du, c_dul, c_uu, c_uul = self._block_classes(y)
        xs = self.scale(x)
        xs = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)  # tells padding from data
        u_list = [down_shift(self.u_in(xs))]
        ul_list = [down_shift(self.ul_in_up(xs)) + right_shift(self.ul_in_left(xs))]
        k = 0
        for level in range(self.num_resolutions):
            for _ in range(self.num_resnet):
                u_list.append(self.down_u[k](u_list[-1], classes=c_du[k]))
                ul_list.append(self.down_ul[k](ul_list[-1], u_list[-1], c_dul[k]))
                k += 1
            if level < self.num_resolutions - 1:
                u_list.append(self.downsample_u[level](u_list[-1]))
                ul_list.append(self.downsample_ul[level](ul_list[-1]))
        u, ul = u_list.pop(), ul_list.pop()
        k = 0
        for level in reversed(range(self.num_resolutions)):
            blocks = self.num_resnet + (1 if level < self.num_resolutions - 1 else 0)
            for _ in range(blocks):
                u = self.up_u[k](u, u_list.pop(), c_uu[k])
                ul = self.up_ul[k](ul, torch.cat([u, ul_list.pop()], dim=1), c_uul[k])
                k += 1
            if level > 0:
                u, ul = self.upsample_u[level - 1](u), self.upsample_ul[level - 1](ul)
        return self.out(F.elu(ul))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        y = self.condition(len(x), y, x.device, check_range=False)
        return dlm.log_prob(
            full_precision(self.parameters_of(x, y)), x, self.levels, self.num_mixtures
        )

    @torch.no_grad()
    def sample_naive(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        c = self.event_shape[0]
        device = self.out.weight.device
        y = self.condition(n, y, device)
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        for i, j in self.positions():
            params = self.parameters_of(x, y)[:, :, i : i + 1, j : j + 1]
            x[:, :, i : i + 1, j : j + 1] = dlm.sample(
                params, self.levels, self.num_mixtures, c, temperature
            )
        return x

    # -- cached sampling ------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        return self.sample_cached(n, temperature, y)

    @torch.no_grad()
    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        if self.training and any(isinstance(m, nn.Dropout) for m in self.modules()):
            # dropout draws a fresh mask per full pass: only the naive sampler reproduces it
            return self.sample_naive(n, temperature, y)
        c, height, width = self.event_shape
        device = self.out.weight.device
        sites = self._block_classes(self.condition(n, y, device))
        maps = _Maps(n, self.out.weight, height, width)
        xs = maps.map("xs", c + 1, 0)  # the scaled image and the channel of ones
        interior(xs, 0, height, 0, width)[:, c] = 1.0
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        for i in range(height):
            self._cached_pass(maps, sites, i, None)  # the u stream's rows that row i reads
            for j in range(width):
                params = self._cached_pass(maps, sites, i, j)
                value = dlm.sample(params, self.levels, self.num_mixtures, c, temperature)
                x[:, :, i : i + 1, j : j + 1] = value
                interior(xs, i, i + 1, j, j + 1)[:, :c] = self.scale(value)
        return x

    def _region(self, level: int, i: int, j: int | None) -> tuple[int, int, int, int] | None:
        """The output region (rows r0..r1-1, columns c0..c1-1) at ``level`` (size halved
        ``level`` times) that becomes computable at row ``i`` (u stream: ``j`` None) or pixel
        (i, j) (ul stream), or None when nothing at that level does."""
        step = 1 << level
        if i % step or (j is not None and j % step):
            return None
        a = i >> level
        if j is None:
            return (a, a + 1, 0, self.event_shape[2] >> level)
        return (a, a + 1, j >> level, (j >> level) + 1)

    def _cached_pass(self, maps, sites, i: int, j: int | None) -> Tensor | None:
        """``parameters_of`` restricted to what becomes computable at row ``i`` of the u
        stream (``j`` None) or at pixel (i, j) of the ul stream; the latter returns the
        pixel's mixture parameters (B, P, 1, 1). ``sites``: ``_block_classes``'s four lists.
        Map keys follow ``parameters_of``: (stream, index in u_list / ul_list), (stream, "up",
        block), (stream, "upsampled", level)."""
        num_res, nr = self.num_resolutions, self.num_resnet
        c_du, c_dul, c_uu, c_uul = sites
        stream = "u" if j is None else "ul"
        xs = maps["xs"]

        def get(key, region):
            return interior(maps[key], *region)

        def put(key, level, region, value):
            interior(maps.map(key, value.shape[1], level), *region).copy_(value)
            return value

        def block(name, module: GatedResnet, x, aux, classes, level, region):
            width = 2 * x.shape[1]  # concat_elu's channels, into either convolution
            cache_in = maps.map((name, "in"), width, level)
            cache_out = maps.map((name, "out"), width, level)
            return module.forward_region(x, aux, classes, cache_in, cache_out, region)

        region = self._region(0, i, j)
        if j is None:  # down_shift(u_in(xs)): row i reads the input rows i - 2, i - 1
            value = conv_region(self.u_in, xs, i - 1, i, *region[2:]) if i > 0 else None
        else:  # down_shift(ul_in_up(xs)) + right_shift(ul_in_left(xs))
            above = conv_region(self.ul_in_up, xs, i - 1, i, j, j + 1) if i > 0 else 0.0
            left = conv_region(self.ul_in_left, xs, i, i + 1, j - 1, j) if j > 0 else 0.0
            value = above + left if i > 0 or j > 0 else None
        if value is None:  # the shifted-in zeros: the map's buffer is zero already
            maps.map((stream, 0), self.out.in_channels, 0)
        else:
            put((stream, 0), 0, region, value)
        for level in range(num_res):
            region = self._region(level, i, j)
            if region is None:
                break
            start = level * (nr + 1)  # u_list index of this level's first map
            for b in range(nr):
                k = level * nr + b
                x = get((stream, start + b), region)
                if j is None:
                    value = block(("down_u", k), self.down_u[k], x, None, c_du[k], level, region)
                else:
                    aux = get(("u", start + b + 1), region)
                    value = block(("down_ul", k), self.down_ul[k], x, aux, c_dul[k], level, region)
                put((stream, start + b + 1), level, region, value)
            coarse = self._region(level + 1, i, j) if level < num_res - 1 else None
            if coarse is not None:
                conv = (self.downsample_u if j is None else self.downsample_ul)[level]
                value = conv_region(conv, maps[(stream, start + nr)], *coarse)
                put((stream, start + nr + 1), level + 1, coarse, value)
        k = 0
        for level in reversed(range(num_res)):
            last = level == num_res - 1
            blocks = nr if last else nr + 1
            region = self._region(level, i, j)
            if region is None:
                k += blocks
                continue
            start = level * (nr + 1)
            for b in range(blocks):
                if b > 0:
                    x = get((stream, "up", k - 1), region)
                else:
                    x = get((stream, start + nr) if last else (stream, "upsampled", level), region)
                skip = start + (nr - 1 if last else nr) - b  # the u_list entry popped here
                if j is None:
                    skipped = get(("u", skip), region)
                    value = block(("up_u", k), self.up_u[k], x, skipped, c_uu[k], level, region)
                else:
                    aux = torch.cat([get(("u", "up", k), region), get(("ul", skip), region)], 1)
                    value = block(("up_ul", k), self.up_ul[k], x, aux, c_uul[k], level, region)
                put((stream, "up", k), level, region, value)
                k += 1
            if level > 0:  # the 2x-upsampled rows (u) or 2x2 cell (ul) this region feeds
                deconv = (self.upsample_u if j is None else self.upsample_ul)[level - 1]
                r0, _, c0, c1 = region
                put(
                    (stream, "upsampled", level - 1),
                    level - 1,
                    (2 * r0, 2 * r0 + 2, 2 * c0, 2 * c1),
                    deconv(value),
                )
        return None if j is None else self.out(F.elu(value))


class _Maps(dict):
    """Cached sampling's feature maps by key, each a zero-bordered buffer made on first use
    at its level's size (the image's, halved ``level`` times)."""

    def __init__(self, n: int, like: Tensor, height: int, width: int):
        super().__init__()
        self.n, self.like, self.height, self.width = n, like, height, width

    def map(self, key, channels: int, level: int) -> Tensor:
        if key not in self:
            size = (self.height >> level, self.width >> level)
            self[key] = buffer(self.n, channels, *size, self.like)
        return self[key]
