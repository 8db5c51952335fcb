"""Image grids people look at: small images enlarged, a caption that says what is shown."""

from __future__ import annotations

import torch
from PIL import Image

from genflow.engine.pictures import MIN_CELL, save_samples


def test_grids_enlarge_small_images_and_carry_their_caption(tmp_path):
    digits = torch.randint(0, 17, (12, 1, 8, 8))
    plain = save_samples(digits, tmp_path / "plain.png", levels=17, nrow=4)
    assert Image.open(plain).size == (4 * (MIN_CELL + 1) + 1, 3 * (MIN_CELL + 1) + 1)
    captioned = save_samples(
        digits, tmp_path / "captioned.png", levels=17, nrow=4, caption="step 500: 12 samples"
    )
    width, height = Image.open(captioned).size
    assert width == 4 * (MIN_CELL + 1) + 1 and height > 3 * (MIN_CELL + 1) + 1
    # the grid under the caption is the plain grid, pixel for pixel
    band = height - Image.open(plain).size[1]
    below = Image.open(captioned).convert("RGB").crop((0, band, width, height))
    assert list(below.getdata()) == list(Image.open(plain).convert("RGB").getdata())
    # MNIST-sized images are doubled (28 -> 56), CIFAR-sized ones kept
    mnist = save_samples(torch.zeros(2, 1, 28, 28), tmp_path / "m.png", levels=256, nrow=2)
    cifar = save_samples(torch.zeros(2, 3, 32, 32), tmp_path / "c.png", levels=256, nrow=2)
    assert Image.open(mnist).size == (2 * 57 + 1, 58) and Image.open(cifar).size == (67, 34)
