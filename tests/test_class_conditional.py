"""Class-conditional ARMs end to end: train with model.num_classes, the conditional test
likelihood in eval.json, genflow sample sample.label, the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MODEL_TINY, RUN_TINY, compose_config, run_dirs, run_genflow
from PIL import Image

import genflow
from genflow.errors import GenflowError
from genflow.tasks import sample as sample_task


def test_a_class_conditional_pixelcnn_trains_scores_p_x_given_y_and_draws_a_chosen_class(workdir):
    args = ["train", "model=pixelcnn", "dataset=digits", "model.num_classes=10"]
    proc = run_genflow([*args, *MODEL_TINY["pixelcnn"], *RUN_TINY], workdir)
    assert "given the class" in proc.stdout + proc.stderr  # the result line says what it is
    [run_dir] = run_dirs(workdir)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["conditional_on"] == "class"

    # eval.json's test nll is the mean of log p(x | y) over the test images with their labels
    run = genflow.load_run(run_dir)
    test, labels = run.data("test"), run.labels("test")
    nll = -run.log_prob(test, y=labels)
    assert summary["nll"] == pytest.approx(nll.mean().item(), rel=1e-6)
    # the labels matter: the same images under other classes score differently
    other = -run.log_prob(test, y=(labels + 1) % 10)
    assert (other - nll).abs().max() > 1e-4
    with pytest.raises(GenflowError, match="pass the class labels"):
        run.log_prob(test[:2])

    # the training pictures draw the classes in turn, one per column: 10 columns of 8x8
    # digits, each enlarged to 32x32, under a caption
    step_png = sorted((run_dir / "samples").glob("step_*.png"))[-1]
    width, height = Image.open(step_png).size
    assert width == 10 * (32 + 1) + 1 and height > 2 * (32 + 1) + 1

    result = sample_task.run(
        compose_config(
            [f"run={run_dir}", "device=cpu", "sample.n=12", "sample.label=3"], name="sample"
        )
    )
    assert result["label"] == 3 and "label3" in result["image"]
    assert torch.load(result["tensor"], weights_only=True).shape == (12, 1, 8, 8)
    with pytest.raises(GenflowError, match="sample.label=10 is not a class"):
        sample_task.run(
            compose_config([f"run={run_dir}", "device=cpu", "sample.label=10"], name="sample")
        )


@pytest.mark.parametrize("family", ["realnvp", "maf"])
def test_a_class_conditional_flow_is_a_density_for_every_class_and_samples_it(family):
    """The per-class Gaussian base: p(x | y) integrates to one on a grid for each class, the
    classes differ, and samples of a class have the grid's mean and spread for that class
    (a sampler that scaled the wrong way, or a density without the scales' log-det, fails)."""
    from conftest import perturbed

    from genflow.models.maf import MAF
    from genflow.models.realnvp import RealNVP

    torch.manual_seed(0)
    if family == "realnvp":
        model = RealNVP((2,), num_layers=2, hidden_features=16, hidden_layers=1, num_classes=2)
    else:
        model = MAF((2,), num_layers=2, hidden_features=16, hidden_layers=1, num_classes=2)
    model = perturbed(model, 0.2).double().eval()
    with torch.no_grad():
        model.class_loc.copy_(torch.tensor([[1.0, -0.5], [-1.0, 0.5]]))
        model.class_log_scale.copy_(torch.tensor([[-0.3, 0.2], [0.1, -0.2]]))
    side = torch.linspace(-9, 9, 601, dtype=torch.float64)
    cell = (side[1] - side[0]) ** 2
    grid = torch.cartesian_prod(side, side)
    for label in range(2):
        y = torch.full((len(grid),), label)
        with torch.no_grad():
            density = model.log_prob(grid, y).exp()
        assert (density.sum() * cell).item() == pytest.approx(1.0, abs=2e-3)
        mean = (density[:, None] * grid).sum(0) * cell
        spread = ((density[:, None] * (grid - mean) ** 2).sum(0) * cell).sqrt()
        torch.manual_seed(1)
        draws = model.sample(40_000, y=torch.tensor(label))
        torch.testing.assert_close(draws.mean(0), mean, atol=0.04, rtol=0)
        torch.testing.assert_close(draws.std(0), spread, atol=0.04, rtol=0.02)
    with torch.no_grad():
        assert (
            model.log_prob(grid[:50], torch.zeros(50, dtype=torch.long))
            - model.log_prob(grid[:50], torch.ones(50, dtype=torch.long))
        ).abs().max() > 0.1
