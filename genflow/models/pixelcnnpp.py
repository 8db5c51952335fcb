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
    down_shift,
    right_shift,
)
from genflow.numeric import full_precision


class PixelCNNpp(AutoregressiveModel):
    """Two streams (rows above: ``u``; above and left: ``ul``) through ``num_resolutions``
    resolutions of ``num_resnet`` gated ResNet blocks, down then up with skip connections.
    The output at a pixel sees only earlier pixels; its channels are modelled jointly by a
    mixture of ``num_mixtures`` discretized logistics with linear R -> G -> B dependence.
    With ``num_classes`` a learned class vector joins the gate inputs of every gated ResNet.
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
    ):
        super().__init__(event_shape, levels, num_classes)
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

    def parameters_of(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mixture parameters for every pixel, each from the pixels before it (and the class
        labels ``y`` of a conditional model)."""
        down = len(self.down_u)
        up = len(self.up_u)
        vectors = self.class_vectors(y)
        c_du, c_dul = vectors[:down], vectors[down : 2 * down]
        c_uu, c_uul = vectors[2 * down : 2 * down + up], vectors[2 * down + up :]
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
        y = self.labels(len(x), y, x.device, check_range=False)
        return dlm.log_prob(
            full_precision(self.parameters_of(x, y)), x, self.levels, self.num_mixtures
        )

    @torch.no_grad()
    def sample_naive(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        c = self.event_shape[0]
        device = self.out.weight.device
        y = self.labels(n, y, device)
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        for i, j in self.positions():
            params = self.parameters_of(x, y)[:, :, i : i + 1, j : j + 1]
            x[:, :, i : i + 1, j : j + 1] = dlm.sample(
                params, self.levels, self.num_mixtures, c, temperature
            )
        return x
