"""Datasets as whole tensors: train / validation / test splits held in memory (and on device).

Images are uint8 tensors of shape (N, C, H, W) with values in [0, levels); the 2-D toys are
float32 tensors of shape (N, 2). Nothing here downloads unless ``download`` is true.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.data.sbi import TASKS, load_sbi
from genflow.data.tabular import TABLE_DATASETS, load_table
from genflow.data.toys import TOYS, make_toy
from genflow.data.uci import UCI_DATASETS, load_uci
from genflow.errors import GenflowError, first_line


@dataclass
class DataSplits:
    train: Tensor
    val: Tensor
    test: Tensor
    # applied to every training batch as it is drawn (dynamic binarization); None: as stored
    train_transform: Callable[[Tensor], Tensor] | None = None
    # the training split as it is scored (one fixed draw where train_transform draws afresh)
    fixed_train: Callable[[Tensor], Tensor] | None = None
    # class labels per split name (int64, one per example) where the dataset has them; used
    # for pictures (the VAE's latent scatter), never by the likelihoods
    labels: dict[str, Tensor] | None = None
    # a table's standardisation from its training split, (loc, scale) per column: the model
    # keeps it (and counts its log-det), the splits stay in the data's own units
    standardization: tuple[Tensor, Tensor] | None = None
    # a context vector per example, per split name (float32 (N, C)): what a conditional
    # model p(x | c) is conditioned on; and its training split's (loc, scale)
    context: dict[str, Tensor] | None = None
    context_standardization: tuple[Tensor, Tensor] | None = None
    # an SBI task's reference observations, each (x_o, exact posterior samples (N, D)): the
    # test's classifier two-sample test compares the model's p(theta | x_o) with them
    references: list[tuple[Tensor, Tensor]] | None = None

    def to(self, device: torch.device | str) -> DataSplits:
        move = lambda d: None if d is None else {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            labels=move(self.labels),
            context=move(self.context),
        )

    def labels_of(self, split: str) -> Tensor | None:
        return None if self.labels is None else self.labels.get(split)

    def conditions(self, split: str, conditioned_on: str | None) -> Tensor | None:
        """What a model conditioned on ``class`` or ``context`` (GenerativeModel.conditioned_on)
        is given with each example of ``split``; None for an unconditional model."""
        if conditioned_on == "class":
            return self.labels_of(split)
        if conditioned_on == "context":
            return None if self.context is None else self.context.get(split)
        return None

    def scored(self, split: str) -> Tensor:
        """The split as evaluation scores it: values in [0, levels). The stored training split
        of a dynamically binarized dataset holds intensities; this gives one fixed draw."""
        if split == "train" and self.fixed_train is not None:
            return self.fixed_train(self.train)
        return getattr(self, split)


def _digits(cfg) -> DataSplits:
    """scikit-learn's 8x8 digits (values 0..16), split 1000 / 350 / 447 in file order.

    The split follows Tomczak's "Deep Generative Modeling" code so numbers compare.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.uint8)).view(-1, 1, 8, 8)
    y = torch.from_numpy(digits.target.astype(np.int64))
    check_digits_split(cfg)
    n_train, n_val = int(cfg.get("n_train", 1000)), int(cfg.get("n_val", 350))
    cut = lambda t: (t[:n_train], t[n_train : n_train + n_val], t[n_train + n_val :])  # noqa: E731
    return DataSplits(*cut(x), labels=dict(zip(("train", "val", "test"), cut(y), strict=True)))


DIGITS_EXAMPLES = 1797  # scikit-learn's digits


def check_digits_split(cfg) -> None:
    """Train and validation counts that leave a test split (checked before any work)."""
    n_train, n_val = int(cfg.get("n_train", 1000)), int(cfg.get("n_val", 350))
    if n_train < 1 or n_val < 1 or n_train + n_val >= DIGITS_EXAMPLES:
        raise GenflowError(
            f"dataset.n_train={n_train} and dataset.n_val={n_val} must be positive and leave "
            f"test images: digits has {DIGITS_EXAMPLES}, so n_train + n_val must be below "
            f"{DIGITS_EXAMPLES}"
        )


class DatasetNotFound(GenflowError):
    """A dataset missing on disk; ``missing`` says where it was looked for, ``folder`` what
    the root should hold (so eval and sample can give their own advice)."""

    def __init__(self, message: str, missing: str, folder: str):
        super().__init__(message)
        self.missing, self.folder = missing, folder


def _root(cfg) -> Path:
    return Path(str(cfg.root)).expanduser()


def _torchvision(cls_name: str, folder: str, files_hint: str) -> Callable:
    def load(cfg) -> DataSplits:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = _root(cfg)
        try:
            train = cls(str(root), train=True, download=bool(cfg.download))
            test = cls(str(root), train=False, download=bool(cfg.download))
        except RuntimeError as err:  # torchvision: "Dataset not found ..."
            missing = f"dataset '{cfg.name}' not found under {root.resolve() / folder} (looked for {files_hint})"
            raise DatasetNotFound(
                f"{missing}; point dataset.root (or the GENFLOW_DATA environment variable) at "
                f"the folder that holds '{folder}', or pass dataset.download=true to download it",
                missing=missing,
                folder=folder,
            ) from err
        return _hold_out(
            _as_nchw(train.data),
            _as_nchw(test.data),
            int(cfg.val_size),
            torch.as_tensor(train.targets, dtype=torch.int64),
            torch.as_tensor(test.targets, dtype=torch.int64),
        )

    return load


def _as_nchw(data) -> Tensor:
    x = torch.as_tensor(np.asarray(data)) if not isinstance(data, Tensor) else data
    if x.dim() == 3:  # (N, H, W) greyscale
        return x.unsqueeze(1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) colour


def _hold_out(
    train: Tensor,
    test: Tensor,
    val_size: int,
    train_labels: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> DataSplits:
    """The validation split is the last ``val_size`` training examples."""
    if not 0 < val_size < len(train):
        raise GenflowError(f"dataset.val_size must be in (0, {len(train)}), got {val_size}")
    labels = None
    if train_labels is not None and test_labels is not None:
        labels = {"train": train_labels[:-val_size], "val": train_labels[-val_size:]}
        labels["test"] = test_labels
    return DataSplits(train[:-val_size], train[-val_size:], test, labels=labels)


BINARIZATIONS = ("static", "dynamic")


def bernoulli_draw(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each pixel 1 with probability intensity / 255."""
    probs = x.float() / 255.0
    return (torch.rand(probs.shape, generator=generator, device=x.device) < probs).to(torch.uint8)


def _binarized(cfg, intensities: DataSplits) -> DataSplits:
    """MNIST as binary images. ``static``: one fixed-seed Bernoulli draw of every split.
    ``dynamic``: training images are drawn afresh every time a batch is drawn (so each epoch
    sees new draws), validation and test stay one fixed draw so evaluations compare."""
    if cfg.binarize not in BINARIZATIONS:
        raise GenflowError(
            f"dataset.binarize={cfg.binarize} is not valid; valid: {', '.join(BINARIZATIONS)}"
        )
    generator = torch.Generator().manual_seed(int(cfg.binarize_seed))
    val, test = (bernoulli_draw(s, generator) for s in (intensities.val, intensities.test))
    if cfg.binarize == "dynamic":
        seed = int(cfg.binarize_seed) + 1
        return DataSplits(
            intensities.train,
            val,
            test,
            train_transform=bernoulli_draw,
            fixed_train=lambda x: bernoulli_draw(x, torch.Generator().manual_seed(seed)),
            labels=intensities.labels,
        )
    train = bernoulli_draw(intensities.train, generator)
    return DataSplits(train, val, test, labels=intensities.labels)


def _read_image(images, index: int) -> Tensor:
    """One image of an ImageFolder, or one sentence naming the file that is not one."""
    from PIL import UnidentifiedImageError

    try:
        return images[index][0]
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise GenflowError(
            f"{images.samples[index][0]} is not a readable image ({first_line(err)}); remove "
            "or replace it"
        ) from err


def _image_folder(cfg) -> DataSplits:
    """Every image under ``root/path`` (torchvision ImageFolder layout), resized and held as uint8."""
    import torchvision
    from torchvision.transforms import v2

    folder = Path(str(cfg.path)).expanduser()
    if not folder.is_absolute():
        folder = _root(cfg) / folder
    if not folder.is_dir():
        raise GenflowError(
            f"image folder {folder.resolve()} does not exist; set dataset.path to a folder "
            "with one sub-folder of images per class (torchvision's ImageFolder layout)"
        )
    size = int(cfg.image_size)
    transforms = [v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if int(cfg.channels) == 1:
        transforms.insert(0, v2.Grayscale())
    layout = "one sub-folder of images per class (torchvision's ImageFolder layout)"
    try:
        images = torchvision.datasets.ImageFolder(str(folder), transform=v2.Compose(transforms))
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or no image files
        raise GenflowError(
            f"image folder {folder} holds no images to read ({first_line(err)}); it needs {layout}"
        ) from err
    parts = random_split(len(images), cfg, f"image folder {folder}")
    x = torch.stack([_read_image(images, i) for i in range(len(images))])
    y = torch.as_tensor(images.targets, dtype=torch.int64)
    return DataSplits(
        *(x[p] for p in parts), labels={s: y[p] for s, p in zip(SPLITS, parts, strict=True)}
    )


SPLITS = ("train", "val", "test")


def random_split(n: int, cfg, what: str) -> tuple[Tensor, Tensor, Tensor]:
    """The train / val / test positions of ``n`` images split at random: one permutation
    seeded with ``dataset.split_seed``, its last ``dataset.test_fraction`` the test split and
    the ``dataset.val_fraction`` before them validation (``image_folder`` and a streamed
    folder split alike, so the two give the same splits)."""
    if n < 3:
        raise GenflowError(f"{what} holds {n} images; need at least 3")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.split_seed)))
    n_test = max(1, int(n * float(cfg.test_fraction)))
    n_val = max(1, int(n * float(cfg.val_fraction)))
    return perm[: -(n_val + n_test)], perm[-(n_val + n_test) : -n_test], perm[-n_test:]


# image datasets read from disk as they are used: the generic one and the papers' sets
STREAMED = ("image_stream", "imagenet32", "imagenet64", "celeba", "celeba_hq")


def _stream(cfg) -> DataSplits:
    """An image dataset read from files as it is used (genflow/data/stream.py): the splits
    are lists of records, decoded by worker processes batch by batch."""
    from genflow.data.stream import Decoding, StreamSplit, list_hf, list_source

    base = Path(str(cfg.path)).expanduser()
    if not base.is_absolute():
        base = _root(cfg) / base
    crop = cfg.get("crop")
    if crop is not None and (len(crop) != 4 or any(int(v) < 0 for v in crop)):
        raise GenflowError(
            f"dataset.crop={list(crop)} must be [top, left, height, width] in pixels, or null"
        )
    decode = Decoding(
        int(cfg.image_size),
        int(cfg.channels),
        int(cfg.n_bits),
        bool(cfg.get("resize", True)),
        None if crop is None else tuple(int(v) for v in crop),
    )
    fmt = str(cfg.get("format", "auto"))
    named = {s: cfg.get(s) for s in ("train", "val", "test")}
    hf_splits = None
    if fmt in ("auto", "hf") and (base / "dataset_dict.json").is_file():
        hf_splits = list_hf(base)  # a saved DatasetDict: its own splits, by name
        defaults = {"train": "train", "test": "test"}
        defaults["val"] = "validation" if "validation" in hf_splits else None
        named = {k: v if v is not None else defaults[k] for k, v in named.items()}
    if cfg.get("partition") is not None:  # a file naming each image's split: 0, 1, 2
        cut = _partitioned(list_source(base, fmt), _root(cfg), str(cfg.partition))
    elif hf_splits is not None:
        sources = {}
        for split, name in named.items():
            if name is None:
                continue
            if str(name) not in hf_splits:
                raise GenflowError(
                    f"the {split} split of dataset '{cfg.name}' is missing: {base} holds the "
                    f"splits {', '.join(hf_splits)}, not '{name}' (dataset.{split})"
                )
            sources[split] = hf_splits[str(name)]
        cut = _held_out_val(sources, cfg)
    elif named["test"] is not None or named["train"] is not None:  # the splits' own folders
        for split in ("train", "test"):
            if named[split] is None:
                raise GenflowError(
                    f"dataset.{'test' if split == 'train' else 'train'} names a folder but "
                    f"dataset.{split} does not; name both (dataset.val is optional)"
                )
        sources = {}
        for split, sub in named.items():
            if sub is None:
                continue
            where = base / str(sub)
            if not where.exists():
                raise GenflowError(
                    f"the {split} split of dataset '{cfg.name}' is missing: {where.resolve()} "
                    f"does not exist (dataset.path={cfg.path}, dataset.{split}={sub})"
                )
            sources[split] = list_source(where, fmt)
        cut = _held_out_val(sources, cfg)
    else:  # one folder, split at random as dataset=image_folder splits it
        records = list_source(base, fmt)
        parts = random_split(len(records), cfg, str(base))
        cut = {s: records.subset(p.numpy()) for s, p in zip(SPLITS, parts, strict=True)}
    workers, strict = int(cfg.get("num_workers", 2)), bool(cfg.get("strict", False))
    flip = bool(cfg.get("flip", False))  # training draws only
    splits = {
        s: StreamSplit(r, decode, workers, strict, flip=flip and s == "train")
        for s, r in cut.items()
    }
    for name, split in splits.items():  # a set of the wrong size or mode stops here, named
        try:
            decode(split.records.read(0))
        except Exception as err:
            raise GenflowError(
                f"the first {name} image, {split.records.name(0)}, cannot be used: "
                f"{first_line(err)}"
            ) from err
    labels = None
    if all(s.labels is not None for s in splits.values()):
        labels = {name: s.labels for name, s in splits.items()}
    return DataSplits(splits["train"], splits["val"], splits["test"], labels=labels)


def _partitioned(records, root: Path, partition: str) -> dict:
    """Train / val / test records from a partition file of lines ``<file name> <0|1|2>``
    (CelebA's list_eval_partition.txt); every image of the folder must be named in it."""
    path = Path(partition).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise GenflowError(f"partition file {path.resolve()} does not exist (dataset.partition)")
    split_of = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise GenflowError(
                f"{path}, line {number}: {line.strip()!r} is not '<file name> <0, 1 or 2>'"
            )
        split_of[fields[0]] = int(fields[1])
    names = [os.path.basename(os.fsdecode(p)) for p in records.paths]
    missing = [n for n in names if n not in split_of]
    if missing:
        raise GenflowError(
            f"{missing[0]} (and {len(missing) - 1} more images) is not in the partition file {path}"
        )
    which = np.array([split_of[n] for n in names])
    cut = {s: records.subset(np.nonzero(which == k)[0]) for k, s in enumerate(SPLITS)}
    empty = [s for s, r in cut.items() if len(r) == 0]
    if empty:
        raise GenflowError(f"the partition file {path} puts no image of the folder in {empty[0]}")
    return cut


def _held_out_val(sources: dict, cfg) -> dict:
    """The train / val / test records of named splits; without a val split, the validation
    records are ``dataset.val_fraction`` of the training ones, held out at random
    (``dataset.split_seed``)."""
    train = sources["train"]
    if "val" in sources:
        val = sources["val"]
    else:
        n_val = max(1, int(len(train) * float(cfg.val_fraction)))
        generator = torch.Generator().manual_seed(int(cfg.split_seed))
        perm = torch.randperm(len(train), generator=generator).numpy()
        train, val = train.subset(np.sort(perm[:-n_val])), train.subset(np.sort(perm[-n_val:]))
    return {"train": train, "val": val, "test": sources["test"]}


def is_streamed(splits: DataSplits) -> bool:
    from genflow.data.stream import StreamSplit

    return isinstance(splits.train, StreamSplit)


def _toy(cfg) -> DataSplits:
    seed = int(cfg.data_seed)
    make = lambda n, offset: torch.from_numpy(make_toy(cfg.name, int(n), seed + offset))  # noqa: E731
    return DataSplits(make(cfg.n_train, 0), make(cfg.n_val, 1), make(cfg.n_test, 2))


LOADERS: dict[str, Callable] = {
    "digits": _digits,
    "mnist": _torchvision(
        "MNIST", "MNIST/raw", "train-images-idx3-ubyte and t10k-images-idx3-ubyte"
    ),
    "fashion_mnist": _torchvision(
        "FashionMNIST", "FashionMNIST/raw", "train-images-idx3-ubyte and t10k-images-idx3-ubyte"
    ),
    "cifar10": _torchvision("CIFAR10", "cifar-10-batches-py", "data_batch_1..5 and test_batch"),
    "binarized_mnist": lambda cfg: _binarized(cfg, LOADERS["mnist"](cfg)),
    "image_folder": _image_folder,
    **{name: _stream for name in STREAMED},
    **{name: _toy for name in TOYS},
    **{name: load_table for name in TABLE_DATASETS},
    **{name: load_sbi for name in TASKS},
    **{name: load_uci for name in UCI_DATASETS},
}


def reduce_bits(x: Tensor, n_bits: int) -> Tensor:
    """Keep the top ``n_bits`` of 8-bit data: values then lie in [0, 2**n_bits)."""
    if not 1 <= n_bits <= 8:
        raise GenflowError(f"dataset.n_bits must be an integer from 1 to 8, got {n_bits}")
    return x >> (8 - n_bits) if n_bits < 8 else x


# Datasets stored as 8-bit intensities: only these take dataset.n_bits. The others have fixed
# levels (digits 0..16, binarized MNIST 0..1) or are continuous (the 2-D toys).
EIGHT_BIT = ("mnist", "fashion_mnist", "cifar10", "image_folder", *STREAMED)


def check_n_bits(cfg) -> None:
    """``dataset.n_bits`` keeps the top bits of 8-bit data; elsewhere it has no meaning."""
    if cfg.get("n_bits") is not None and cfg.name not in EIGHT_BIT:
        raise GenflowError(
            f"dataset.n_bits applies to 8-bit datasets ({', '.join(EIGHT_BIT)}); dataset "
            f"'{cfg.name}' has fixed levels={cfg.get('levels')}, so leave dataset.n_bits=null"
        )


def load_dataset(cfg) -> DataSplits:
    """Build the splits named by ``cfg.name`` (a dataset config), on the CPU."""
    if cfg.name not in LOADERS:
        raise GenflowError(
            f"unknown dataset '{cfg.name}'; valid datasets: {', '.join(sorted(LOADERS))}"
        )
    check_n_bits(cfg)
    n_bits = cfg.get("n_bits")
    splits = LOADERS[cfg.name](cfg)
    if n_bits is not None and not is_streamed(splits):  # streams reduce as they decode
        train, val, test = (
            reduce_bits(s, int(n_bits)) for s in (splits.train, splits.val, splits.test)
        )
        splits = replace(splits, train=train, val=val, test=test)
    expected = tuple(cfg.shape)
    if tuple(splits.train.shape[1:]) != expected:
        raise GenflowError(
            f"dataset '{cfg.name}' has examples of shape {tuple(splits.train.shape[1:])} "
            f"but dataset.shape says {list(expected)}"
        )
    if not is_streamed(splits):  # a stream's decoding gives [0, 2**n_bits) by construction
        check_range(splits, cfg)
    return splits


def check_conditions(splits: DataSplits, cfg, model) -> None:
    """A conditional model needs what it is conditioned on in every split: labels in
    [0, num_classes), or contexts of its width."""
    if model.conditioned_on == "class":
        check_labels(splits, cfg, model.num_classes)
    elif model.conditioned_on == "context":
        width = None if splits.context is None else splits.context["train"].shape[1]
        if width != model.context_features:
            has = "no context" if width is None else f"a context of {width} values"
            raise GenflowError(
                f"the model takes a context of {model.context_features} values per example, "
                f"but dataset '{cfg.name}' has {has}; leave model.context_features at "
                "${dataset.context_features}"
            )


def check_labels(splits: DataSplits, cfg, num_classes: int) -> None:
    """A class-conditional model (model.num_classes) needs every split's labels in
    [0, num_classes)."""
    if splits.labels is None:
        raise GenflowError(
            f"model.num_classes={num_classes} makes a class-conditional model, but dataset "
            f"'{cfg.name}' has no class labels; leave model.num_classes=null"
        )
    for name in ("train", "val", "test"):
        y = splits.labels[name]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise GenflowError(
                f"dataset '{cfg.name}' has class labels in [{int(y.min())}, {int(y.max())}] "
                f"but model.num_classes={num_classes}; set model.num_classes={int(y.max()) + 1}"
            )


def check_range(splits: DataSplits, cfg) -> None:
    """Discrete data must lie in [0, levels): a value at or above ``levels`` would be scored
    against a likelihood that gives it no mass (or a meaningless one)."""
    levels = cfg.get("levels")
    if levels is None:
        return
    for name in ("train", "val", "test"):
        x = splits.scored(name)
        if x.is_floating_point():
            raise GenflowError(
                f"dataset '{cfg.name}' has dataset.levels={levels} but its {name} split holds "
                "real values; discrete data must be integers in [0, levels)"
            )
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= int(levels):
            raise GenflowError(
                f"dataset '{cfg.name}': the {name} split holds values in [{low}, {high}] but "
                f"dataset.levels={levels} means values in [0, {int(levels) - 1}]; set "
                "dataset.levels (or dataset.n_bits) to match the data"
            )
