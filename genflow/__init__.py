"""genflow: a command-line experiment runner for deep generative models in PyTorch."""

__version__ = "0.1.0"
