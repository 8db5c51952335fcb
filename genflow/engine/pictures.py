"""What people look at: image grids of samples, scatter plots of 2-D samples."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from genflow.engine.files import replacing, save_figure

# small images are enlarged (nearest neighbour, by a whole factor) to at least this many
# pixels a side in a grid: 8x8 digits become 32x32, MNIST 56x56
MIN_CELL = 32


def save_grid(images: Tensor, path: Path, nrow: int, caption: str | None = None) -> Path:
    """Images (N, C, H, W) with values in [0, 1] -> a PNG grid, small images enlarged, with
    ``caption`` (what the picture shows: step, temperature, rows and columns) above it."""
    from torchvision.utils import save_image

    factor = max(1, math.ceil(MIN_CELL / min(images.shape[-2:])))
    if factor > 1:
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    with replacing(path) as tmp:  # never through a link at path
        save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=1, pad_value=0.35)
        if caption:
            _add_caption(tmp, caption)
    return path


def _add_caption(path: Path, caption: str) -> None:
    """Write ``caption`` (wrapped to the picture's width) on a white band above the image."""
    from PIL import Image, ImageDraw, ImageFont

    grid = Image.open(path).convert("RGB")
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    lines: list[str] = []
    for word in caption.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(trial, font=font) <= grid.width - 6:
            lines[-1] = trial
        else:
            lines.append(word)
    left, top, right, bottom = font.getbbox("Ag")
    line_height = bottom - top + 3
    band = 4 + line_height * len(lines)
    canvas = Image.new("RGB", (grid.width, grid.height + band), "white")
    canvas.paste(grid, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * line_height - top), line, fill="black", font=font)
    canvas.save(path)


def save_samples(
    samples: Tensor,
    path: Path,
    levels: int | None,
    reference: Tensor | None = None,
    nrow: int | None = None,
    caption: str | None = None,
) -> Path:
    """Images (N, C, H, W) in [0, levels) -> PNG grid (``nrow`` per row, default square,
    ``caption`` above); 2-D points (N, 2) -> scatter plot (``caption`` as its title)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = samples.detach().cpu()
    if samples.dim() == 4:
        images = samples.float() / (levels - 1) if levels else samples.float()
        nrow = nrow or max(1, int(math.sqrt(len(images))))
        return save_grid(images, path, nrow, caption)
    if samples.dim() == 2 and samples.shape[1] == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if reference is not None else 1
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4), squeeze=False)
        plots = [(samples, "samples")]
        if reference is not None:
            plots.insert(0, (reference.detach().cpu(), "data"))
        for ax, (points, title) in zip(axes[0], plots, strict=True):
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_title(title)
            ax.set_aspect("equal")
        lim = torch.cat([p for p, _ in plots]).abs().quantile(0.99).item() * 1.1
        for ax in axes[0]:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        if caption:
            import textwrap

            fig.suptitle(textwrap.fill(caption, 50 * panels), fontsize=9)
        fig.tight_layout()
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        return path
    if samples.dim() == 2:
        return save_pairs(samples, reference, path, caption)
    raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}")


PAIR_COLUMNS = 4


def save_pairs(
    samples: Tensor, reference: Tensor | None, path: Path, caption: str | None = None
) -> Path:
    """Vectors of more than two columns: the first ``PAIR_COLUMNS`` columns pair by pair, the
    data (grey) under the samples (blue), and each column's histogram on the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(PAIR_COLUMNS, samples.shape[1])
    points = samples[:, :k].float().numpy()
    data = None if reference is None else reference.detach().cpu()[:, :k].float().numpy()
    both = points if data is None else data
    low, high = (torch.from_numpy(both).quantile(q, dim=0).numpy() for q in (0.005, 0.995))
    pad = 0.1 * (high - low) + 1e-9
    low, high = low - pad, high + pad
    fig, axes = plt.subplots(k, k, figsize=(2.2 * k, 2.2 * k), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i][j]
            if i == j:
                bins = torch.linspace(float(low[i]), float(high[i]), 41).numpy()
                if data is not None:
                    ax.hist(data[:, i], bins=bins, density=True, color="0.6", label="data")
                ax.hist(points[:, i], bins=bins, density=True, histtype="step", label="samples")
            else:
                if data is not None:
                    ax.scatter(data[:, j], data[:, i], s=1, color="0.6", alpha=0.4)
                ax.scatter(points[:, j], points[:, i], s=1, alpha=0.5)
                ax.set_ylim(low[i], high[i])
            ax.set_xlim(low[j], high[j])
            ax.tick_params(labelsize=6)
            if i == k - 1:
                ax.set_xlabel(f"column {j}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"column {i}", fontsize=7)
    title = f"first {k} of {samples.shape[1]} columns: data (grey), samples (blue)"
    fig.suptitle(f"{caption}\n{title}" if caption else title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_posteriors(references: list, draws: list[Tensor], scores: list[float], path: Path) -> Path:
    """An SBI task's posteriors, one panel per reference observation: exact posterior samples
    (grey) under the model's (blue), over the first two parameters (or a histogram of one),
    each titled with its C2ST accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(references)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.4), squeeze=False)
    for ax, (_, exact), drawn, score in zip(axes[0], references, draws, scores, strict=True):
        exact, drawn = exact.detach().cpu().float(), drawn.detach().cpu().float()
        if exact.shape[1] == 1:
            both = torch.cat((exact, drawn))[:, 0]
            bins = torch.linspace(float(both.min()), float(both.max()), 41).numpy()
            ax.hist(exact[:, 0].numpy(), bins=bins, density=True, color="0.6")
            ax.hist(drawn[:, 0].numpy(), bins=bins, density=True, histtype="step")
        else:
            ax.scatter(exact[:, 0].numpy(), exact[:, 1].numpy(), s=2, color="0.5", alpha=0.6)
            ax.scatter(drawn[:, 0].numpy(), drawn[:, 1].numpy(), s=1, alpha=0.3)
            ax.set_ylabel("theta 1", fontsize=7)
            low, high = exact[:, :2].min(0).values, exact[:, :2].max(0).values
            pad = 0.25 * (high - low) + 1e-6  # the exact posterior's box: stray draws clip
            ax.set_xlim(float(low[0] - pad[0]), float(high[0] + pad[0]))
            ax.set_ylim(float(low[1] - pad[1]), float(high[1] + pad[1]))
        ax.set_xlabel("theta 0", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"c2st {score:.3f}", fontsize=8)
    dims = references[0][1].shape[1]
    shown = {1: "its parameter", 2: "its 2 parameters"}.get(
        dims, f"the first 2 of {dims} parameters"
    )
    fig.suptitle(
        f"p(theta | x_o) at {k} observations, {shown}: exact (grey), "
        "model (blue); c2st 0.5 is indistinguishable",
        fontsize=8,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def save_density(model, reference: Tensor, path: Path, grid_size: int = 200) -> Path:
    """Heat map of a 2-D model's density on a grid, beside a scatter of the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    points = reference.detach().cpu()
    lim = points.abs().quantile(0.995).item() * 1.15
    axis = torch.linspace(-lim, lim, grid_size)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    log_density = torch.cat([model.log_prob(chunk.to(device)).cpu() for chunk in grid.split(8192)])
    model.train(was_training)
    density = log_density.exp().view(grid_size, grid_size)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=1, alpha=0.4)
    axes[0].set_title("data")
    axes[1].imshow(density.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    axes[1].set_title("model density")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_strip(rows: Tensor, path: Path, levels: int | None, caption: str | None = None) -> Path:
    """(R, S, C, H, W) images -> a grid with one row per interpolation."""
    images = rows.detach().cpu().float().flatten(0, 1)
    images = images / (levels - 1) if levels else images
    return save_grid(images, path, rows.shape[1], caption)


def density_picture(model, reference: Tensor, path: Path) -> Path:
    """A 2-D model's density picture: its own where it draws one (a flow fitted to an energy,
    which may not score a grid), else the heat map of ``save_density``."""
    own = getattr(model, "density_picture", None)
    return own(reference, path) if own is not None else save_density(model, reference, path)


def save_latent_scatter(
    points: Tensor, labels: Tensor | None, path: Path, title: str, max_points: int = 2000
) -> Path:
    """2-D latent codes (N, 2) as a scatter, coloured by class where ``labels`` are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    points = points.detach().cpu().float()[:max_points]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if labels is None:
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=4, alpha=0.6)
    else:
        labels = labels.detach().cpu()[:max_points]
        classes = sorted(int(c) for c in labels.unique())
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            chosen = labels == c
            ax.scatter(
                points[chosen, 0].numpy(),
                points[chosen, 1].numpy(),
                s=4,
                alpha=0.7,
                color=cmap(i % cmap.N),
                label=str(c),
            )
        ax.legend(
            title="class", markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5)
        )
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def class_labels(num_classes: int, n: int, label: int | None, device, first: int = 0) -> Tensor:
    """Labels for ``n`` draws of a class-conditional model: ``label`` for every draw, or the
    classes in turn (image i of a grid, counted from ``first``, gets class i mod K), so a
    grid of K columns shows a class per column."""
    if label is not None:
        return torch.full((n,), int(label), dtype=torch.long, device=device)
    return torch.arange(first, first + n, device=device) % num_classes


def draw_samples(
    model,
    n: int,
    temperature: float = 1.0,
    label: int | None = None,
    first: int = 0,
    contexts: Tensor | None = None,
) -> tuple[Tensor, int | None]:
    """``n`` samples and the grid's images per row: a class-conditional model draws the
    classes in turn (a class per column; ``first`` is the first image's index in the grid)
    or only ``label``; a model of p(x | c) draws one sample per row of ``contexts``; others
    draw plainly."""
    if model.conditioned_on == "context":
        return model.sample(n, temperature, y=contexts[:n]), None
    if model.num_classes is None:
        return model.sample(n, temperature), None
    device = next(model.parameters()).device
    y = class_labels(model.num_classes, n, label, device, first)
    return model.sample(n, temperature, y=y), None if label is not None else model.num_classes


def write_step_pictures(
    model,
    val: Tensor,
    run_dir,
    step: int,
    n: int,
    seed: int,
    logger=None,
    val_labels: Tensor | None = None,
    scatter_points: int = 2000,
    val_context: Tensor | None = None,
) -> Path:
    """The pictures of a training step: ``n`` samples (``step_<step>.png``), the model's own
    extra grids (reconstructions, traversals ...), for 2-D data the density, and for a model
    with a 2-D latent space the codes of up to ``scatter_points`` validation examples,
    coloured by ``val_labels`` when the dataset has labels. A model of p(x | c) draws one
    sample for each of the first ``n`` contexts of ``val_context``, shown beside the
    validation examples that go with them (no density picture). Drawn in eval mode on an RNG
    stream seeded with ``seed`` (the caller's stream is untouched), so the grids of
    successive steps show the same noise; a class-conditional model draws a class per
    column. ``run_dir`` (a RunDir) names the files; each is logged to ``logger``."""
    from genflow.engine.evaluate import seeded_rng

    was_training = model.training
    model.eval()
    conditional = val_context is not None and model.conditioned_on == "context"
    if conditional:
        n = min(n, len(val))
    with seeded_rng(seed, val.device):
        samples, nrow = draw_samples(model, n, contexts=val_context if conditional else None)
        extra = model.pictures(val[:n])
        # asked of one example first: a streamed split decodes the examples it is sliced to
        has_codes = model.latent_points(val[:1]) is not None
        codes = model.latent_points(val[:scatter_points]) if has_codes else None
    model.train(was_training)
    vectors = val.dim() == 2
    two_d = vectors and val.shape[1] == 2 and not conditional
    what = f"{n} samples" + (", a class per column" if nrow and model.num_classes else "")
    if conditional:
        what += ", one per validation context"
    written = {
        "samples": save_samples(
            samples,
            run_dir.picture("step", step),
            model.levels,
            (val[:n] if conditional else val) if vectors else None,
            nrow,
            caption=f"step {step}: {what}, temperature 1",
        )
    }
    for name, (images, nrow, *described) in extra.items():
        caption = f"step {step}: {described[0] if described else name}"
        written[name] = save_samples(
            images, run_dir.picture(name, step), model.levels, nrow=nrow, caption=caption
        )
    if two_d:
        written["density"] = density_picture(model, val, run_dir.picture("density", step))
    if codes is not None:
        written["latent_scatter"] = save_latent_scatter(
            codes,
            None if val_labels is None else val_labels[: len(codes)],
            run_dir.picture("latent_scatter", step),
            f"validation posterior means, step {step}",
        )
    if logger is not None:
        for key, path in written.items():
            logger.log_image(step, key, path)
    return written["samples"]
