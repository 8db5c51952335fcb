"""The classifier two-sample test (C2ST): how well a classifier tells two samples apart.

Accuracy 0.5 means the two samples are indistinguishable to it; 1.0 means they share no
support. As in the SBI benchmark (Lueckmann et al., 2021, arXiv:2101.04653): both samples are
z-scored with the statistics of the first, an MLP with two hidden layers of 10 x dim ReLU units
(scikit-learn's, Adam) is trained, and the accuracy is the mean over 5-fold cross-validation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def c2st(first: Tensor, second: Tensor, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated accuracy of a classifier separating ``first`` from ``second`` (N, D)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    a = first.detach().double().cpu().numpy()
    b = second.detach().double().cpu().numpy()
    mean, std = a.mean(0), a.std(0)
    std = np.where(std > 0, std, 1.0)
    data = (np.concatenate((a, b)) - mean) / std
    target = np.concatenate((np.zeros(len(a)), np.ones(len(b))))
    width = 10 * a.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(width, width),
        max_iter=1000,
        solver="adam",
        random_state=seed,
    )
    split = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, target, cv=split, scoring="accuracy")))


@torch.no_grad()
def posterior_c2st(model, references, samples_per_observation: int | None = None, seed: int = 0):
    """C2ST of the model's p(theta | x_o) against each reference posterior: (mean, per
    observation, the model's samples per observation). The model draws as many samples as
    each reference holds."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from genflow.engine.evaluate import seeded_rng

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores, draws = [], []
    with seeded_rng(seed, device):  # the caller's RNG stream is untouched
        for k, (x_o, reference) in enumerate(references):
            n = samples_per_observation or len(reference)
            drawn = model.sample(n, y=x_o.to(device)).float().cpu()
            draws.append(drawn)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                scores.append(c2st(reference[:n], drawn, seed=seed + k))
    model.train(was_training)
    return float(np.mean(scores)), scores, draws
