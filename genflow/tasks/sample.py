"""genflow sample: draw from a run's model; write a PNG (grid or scatter) and the raw tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from genflow.data.datasets import load_dataset
from genflow.engine.device import resolve_device
from genflow.engine.files import save_tensor
from genflow.engine.pictures import density_picture, draw_samples, save_samples, save_strip
from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError
from genflow.tasks.common import apply_solver_settings, load_model_from_checkpoint, output_folder
from genflow.validation import validate_sample_config


def interpolate(
    model, cfg, ckpt, run_dir: RunDir, checkpoint, device, out_dir: Path
) -> dict[str, Any]:
    """Rows of decoded latents on the straight line between pairs of test images."""
    s = cfg.sample
    if not model.can_encode:
        raise GenflowError(
            f"sample.mode=interpolate needs a model with an encoder (a flow or a VAE); "
            f"{type(model).__name__} has none"
        )
    test = load_dataset(OmegaConf.create(ckpt["config"]["dataset"])).test
    if test.dim() != 4:
        raise GenflowError("sample.mode=interpolate is for image datasets")
    pairs, steps = int(s.pairs), int(s.steps)
    if pairs < 1 or steps < 2 or 2 * pairs > len(test):
        raise GenflowError(f"sample.pairs must be in [1, {len(test) // 2}] and sample.steps >= 2")
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(int(s.seed)))[
        : 2 * pairs
    ]
    with torch.no_grad():
        z = model.encode(test[index].to(device))
        start, end = z[:pairs], z[pairs:]
        t = torch.linspace(0, 1, steps, device=device).view(1, steps, *([1] * (z.dim() - 1)))
        path_z = (1 - t) * start.unsqueeze(1) + t * end.unsqueeze(1)
        decoded = model.decode(path_z.flatten(0, 1))
    rows = decoded.view(pairs, steps, *decoded.shape[1:])
    stem = f"interpolate_{checkpoint.stem}_pairs{pairs}_steps{steps}_seed{s.seed}"
    caption = (
        f"{checkpoint.name} (step {ckpt['trainer']['step']}): each row the straight line in "
        f"latent space between two test images (first and last), {steps} steps"
    )
    image = save_strip(rows, out_dir / f"{stem}.png", model.levels, caption)
    save_tensor(rows.cpu(), out_dir / f"{stem}.pt")
    return {
        "run": str(run_dir.path),
        "checkpoint": checkpoint.name,
        "mode": "interpolate",
        "image": str(image),
        "tensor": str(out_dir / f"{stem}.pt"),
        "pairs": pairs,
        "steps": steps,
    }


CONTEXT_SPLITS = ("train", "val", "test")


def sampling_contexts(
    model, spec, n: int, ckpt
) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
    """The ``n`` contexts a conditional model draws for (``sample.context``), the data that go
    with them where there are some (to draw beside the samples), and what they are in words.

    ``null`` or a split name: the split's contexts in order (test by default), cycled to n,
    beside that split's examples; a list of numbers: one context for every sample; a path to
    a .npy or .csv file: its rows, cycled."""
    if model.conditioned_on != "context":
        if spec is not None:
            raise GenflowError(
                f"sample.context is for a model of p(x | c); this run's {type(model).__name__} "
                "takes no context"
            )
        return None, None, None
    width = model.context_features
    reference = None
    if spec is None or (isinstance(spec, str) and spec in CONTEXT_SPLITS):
        split = spec or "test"
        splits = load_dataset(OmegaConf.create(ckpt["config"]["dataset"]))
        rows, reference = splits.context[split], splits.scored(split)
        what = f"one per {split} context, in order"
    elif isinstance(spec, str):
        rows = _context_file(spec)
        what = f"one per row of {spec}"
    else:
        rows = torch.as_tensor(list(spec), dtype=torch.float32).reshape(1, -1)
        what = f"all for the context {rows[0].tolist()}"
    if rows.dim() != 2 or rows.shape[1] != width:
        raise GenflowError(
            f"sample.context gives contexts of {rows.shape[-1]} values; this run's model takes "
            f"{width}"
        )
    index = torch.arange(n) % len(rows)
    return rows[index].float(), None if reference is None else reference[index], what


def context_tag(spec) -> str:
    """``sample.context`` in a file name: the split, the file's stem, or the numbers."""
    import re
    from pathlib import Path

    if isinstance(spec, str):
        tag = spec if spec in CONTEXT_SPLITS else Path(spec).stem
    else:
        values = [f"{float(v):g}" for v in spec]
        tag = "_".join(values[:4]) + ("_etc" if len(values) > 4 else "")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", tag)[:60]


def _context_file(spec: str) -> torch.Tensor:
    from pathlib import Path

    import numpy as np

    path = Path(spec).expanduser()
    if not path.is_file():
        raise GenflowError(
            f"sample.context={spec}: not a split ({', '.join(CONTEXT_SPLITS)}), a list of "
            "numbers or an existing .npy or .csv file"
        )
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".csv":
            values = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise GenflowError(f"sample.context={spec}: contexts are read from .npy or .csv files")
    except (OSError, ValueError) as err:
        raise GenflowError(f"sample.context={spec} could not be read ({err})") from err
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise GenflowError(f"sample.context={spec} holds NaN or infinite values")
    return torch.from_numpy(values.reshape(len(values), -1) if values.ndim else values[None])


def run(cfg) -> dict[str, Any]:
    validate_sample_config(cfg)
    s = cfg.sample
    run_dir, checkpoint = RunDir.locate(cfg.run, cfg.checkpoint)
    out_dir = output_folder(cfg, run_dir, run_dir.samples)  # before the work
    device = resolve_device(cfg.device)
    model, ckpt = load_model_from_checkpoint(checkpoint, device)
    apply_solver_settings(model, s.get("solver"), "sample_solver", "sample.solver")
    torch.manual_seed(int(s.seed))
    if s.mode == "interpolate":
        summary = interpolate(model, cfg, ckpt, run_dir, checkpoint, device, out_dir)
        print(json.dumps(summary), flush=True)
        return summary
    label = s.get("label")
    contexts, reference, drawn_for = sampling_contexts(model, s.get("context"), int(s.n), ckpt)
    if label is not None and model.num_classes is None:
        raise GenflowError(
            f"sample.label={label}: this run's {type(model).__name__} is not class-conditional "
            "(train with model.num_classes=K to draw a chosen class)"
        )
    if label is not None and label >= model.num_classes:
        raise GenflowError(
            f"sample.label={label} is not a class of this run's model; its classes are "
            f"0 to {model.num_classes - 1}"
        )
    nrow = None
    with torch.no_grad():
        chunks = []
        for start in range(0, int(s.n), int(s.batch_size)):
            size = min(int(s.batch_size), int(s.n) - start)
            # the classes in turn continue across batches: class = image index mod K
            drawn, nrow = draw_samples(
                model,
                size,
                float(s.temperature),
                label,
                start,
                None if contexts is None else contexts[start : start + size].to(device),
            )
            chunks.append(drawn)
    samples = torch.cat(chunks).cpu()
    stem = f"sample_{checkpoint.stem}_n{s.n}_t{float(s.temperature):g}_seed{s.seed}"
    if label is not None:
        stem += f"_label{label}"
    if contexts is not None and s.get("context") is not None:
        stem += f"_context-{context_tag(s.context)}"
    save_tensor(samples, out_dir / f"{stem}.pt")
    extra = {}
    if contexts is not None:
        save_tensor(contexts, out_dir / f"{stem}_context.pt")
        extra["context"] = str(out_dir / f"{stem}_context.pt")
    elif samples.dim() == 2:  # vectors: draw the data beside the samples; 2-D: the density
        reference = load_dataset(OmegaConf.create(ckpt["config"]["dataset"])).val
        if samples.shape[1] == 2:
            density = density_picture(model, reference, out_dir / f"density_{checkpoint.stem}.png")
            extra["density"] = str(density)
    drawn = (
        f"class {label}"
        if label is not None
        else "a class per column"
        if model.num_classes is not None
        else drawn_for or "samples"
    )
    caption = (
        f"{checkpoint.name} (step {ckpt['trainer']['step']}): {s.n} draws, {drawn}, "
        f"temperature {float(s.temperature):g}, seed {s.seed}"
    )
    image = save_samples(samples, out_dir / f"{stem}.png", model.levels, reference, nrow, caption)
    summary = {
        **extra,
        "run": str(run_dir.path),
        "checkpoint": checkpoint.name,
        "image": str(image),
        "tensor": str(out_dir / f"{stem}.pt"),
        "n": int(s.n),
        "temperature": float(s.temperature),
        "seed": int(s.seed),
    }
    if model.num_classes is not None:
        summary["label"] = label  # None: the classes in turn, a class per grid column
    if hasattr(model, "evaluation_settings"):  # continuous flows: how the samples were solved
        summary["solver"] = model.flow.sample_solver.describe()
        summary["nfe"] = model.flow.last_nfe  # the last batch's solve
    print(json.dumps(summary), flush=True)
    return summary
