"""Plain networks used as conditioners, encoders and decoders."""

from genflow.nn.mlp import MLP
from genflow.nn.resnet import ResidualBlock, ResNet

__all__ = ["MLP", "ResNet", "ResidualBlock"]
