"""Image datasets read from disk as they are used: for data that does not fit in memory.

A source is listed once at start-up, without decoding anything: the image files of a folder
(torchvision's ImageFolder layout, or a flat folder), the members of tar shards
(WebDataset's layout: ``<key>.png`` / ``<key>.jpg`` with an optional ``<key>.cls`` label;
each member's offset is read from its header, so a record is one seek and one read), or the
rows of a Hugging Face dataset saved with ``save_to_disk`` (memory-mapped Arrow, its image
bytes read as stored). The
examples are then decoded, resized and cropped in DataLoader worker processes
(``dataset.num_workers``) as the batches are drawn.

The training batches are the in-memory path's (``EpochBatches``): the permutation of epoch e
is seeded with (seed, e) and global micro-batch j is its j-th slice, so a batch is a pure
function of (seed, j). The loader's position is therefore the training step, which every
checkpoint holds: a run stopped mid-epoch resumes with exactly the batches it would have
drawn, with any number of workers, and each DDP rank reads only its own micro-batches.

A record that cannot be read (not an image, truncated, or of another size or colour mode
than the set's) is skipped and counted, with a warning naming it; ``dataset.strict=true``
makes it an error instead.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.data.batches import EpochOrder
from genflow.errors import GenflowError, first_line

log = logging.getLogger(__name__)

# torchvision's ImageFolder extensions, so a folder lists the same files either way
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMATS = ("auto", "folder", "tar", "hf")


@dataclass
class Records:
    """Where each example of a source is, and its label, without its pixels.

    Files: ``root / paths[i]``. Tar shards: ``shards[shard[i]]`` at byte ``offset[i]``,
    ``size[i]`` bytes long, named ``paths[i]`` inside it. Arrays of bytes (one byte a
    character, where a str array takes four: ImageNet's 1.28M names fit in tens of MB), not
    lists of objects, so forked workers share them without copying.
    """

    paths: np.ndarray  # bytes: the file under root, or the member's name inside its shard
    labels: np.ndarray | None = None  # int64, one per record, or None (no classes)
    shards: list[str] = field(default_factory=list)
    shard: np.ndarray | None = None  # int32 index into shards
    offset: np.ndarray | None = None  # int64
    size: np.ndarray | None = None  # int64
    root: str = ""  # the folder the files' paths are relative to
    # a Hugging Face dataset saved with save_to_disk: (folder, split or "", image column);
    # ``rows`` then holds each record's row (paths is empty)
    hf: tuple[str, str, str] | None = None
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.hf is not None else len(self.paths)

    def name(self, i: int) -> str:
        if self.hf is not None:
            folder, split, _ = self.hf
            return f"{folder}{f'[{split}]' if split else ''} row {int(self.rows[i])}"
        if self.shard is None:
            return os.path.join(self.root, os.fsdecode(self.paths[i]))
        return f"{self.shards[int(self.shard[i])]}:{os.fsdecode(self.paths[i])}"

    def read(self, i: int) -> bytes:
        if self.hf is not None:
            folder, split, column = self.hf
            cell = _hf_table(folder, split, column)[int(self.rows[i])][column]
            if cell.get("bytes") is not None:
                return cell["bytes"]
            with open(cell["path"], "rb") as f:  # an image column that stores paths
                return f.read()
        if self.shard is None:
            with open(self.name(i), "rb") as f:
                return f.read()
        with open(self.shards[int(self.shard[i])], "rb") as f:
            f.seek(int(self.offset[i]))
            data = f.read(int(self.size[i]))
        if len(data) != int(self.size[i]):
            raise OSError(f"{len(data)} of {int(self.size[i])} bytes (the shard is truncated)")
        return data

    def subset(self, index: np.ndarray) -> Records:
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return replace(
            self,
            paths=self.paths if self.hf is not None else self.paths[index],
            rows=pick(self.rows),
            labels=pick(self.labels),
            shard=pick(self.shard),
            offset=pick(self.offset),
            size=pick(self.size),
        )


def _image_files(folder: Path, under: str = "") -> list[bytes]:
    """Every image file under ``folder``, in torchvision's order (sorted walk, sorted names),
    as paths relative to ``folder``'s parent when ``under`` names it, else to ``folder``."""
    out = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        relative = os.path.join(under, os.path.relpath(root, folder))
        out += [
            os.fsencode(os.path.normpath(os.path.join(relative, n)))
            for n in sorted(names)
            if n.lower().endswith(IMAGE_SUFFIXES)
        ]
    return out


def list_folder(folder: Path) -> Records:
    """An ImageFolder layout (one sub-folder per class: labelled) or a flat folder of images
    (no labels)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if classes:
        loose = [
            e.name
            for e in os.scandir(folder)
            if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
        ]
        if loose:
            raise GenflowError(
                f"image folder {folder} holds images ({loose[0]}) beside class sub-folders "
                f"({classes[0]}); put every image in a class folder, or none"
            )
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = _image_files(folder / name, under=name)
            paths += files
            labels += [label] * len(files)
        records = Records(
            np.array(paths, dtype=bytes),
            np.array(labels, dtype=np.int64),
            root=str(folder),
        )
    else:
        records = Records(np.array(_image_files(folder), dtype=bytes), root=str(folder))
    if len(records) == 0:
        raise GenflowError(
            f"image folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); it "
            "needs images, or one sub-folder of images per class"
        )
    return records


def list_shards(shards: list[Path]) -> Records:
    """The image members of WebDataset tar shards, each with its ``<key>.cls`` label where
    every record has one. Reads the members' headers only (and the small .cls members)."""
    paths, shard, offset, size, labels = [], [], [], [], []
    for s, path in enumerate(shards):
        file_size = path.stat().st_size
        found: dict[str, int] = {}  # key -> index of its image record
        cls: dict[str, int] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                    suffix = base[len(base.split(".", 1)[0]) :].lower()
                    if member.offset_data + member.size > file_size:
                        raise tarfile.ReadError(f"member {member.name} runs past the end")
                    if suffix == ".cls":
                        text = tar.extractfile(member).read().decode().strip()
                        try:
                            cls[key] = int(text)
                        except ValueError as err:
                            raise GenflowError(
                                f"{path}: {member.name} holds {text[:20]!r}, not a class index"
                            ) from err
                    elif suffix.endswith(IMAGE_SUFFIXES) and key not in found:
                        found[key] = len(paths)
                        paths.append(os.fsencode(member.name))
                        shard.append(s)
                        offset.append(member.offset_data)
                        size.append(member.size)
                # a whole archive ends with two zero blocks; a truncated one (tarfile stops
                # quietly at a header cut short) does not
                if file_size - tar.offset < 2 * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(f"no end-of-archive blocks after byte {tar.offset}")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise GenflowError(
                f"tar shard {path} cannot be read ({first_line(err)}); it is truncated or not "
                "a tar file: replace it, or remove it from the folder"
            ) from err
        labels += [cls.get(k, -1) for k in found]
    if not paths:
        raise GenflowError(
            f"the tar shards ({shards[0]}, ...) hold no image members ({', '.join(IMAGE_SUFFIXES)})"
        )
    label_array = np.array(labels, dtype=np.int64)
    return Records(
        np.array(paths, dtype=bytes),
        label_array if (label_array >= 0).all() else None,
        shards=[str(p) for p in shards],
        shard=np.array(shard, dtype=np.int32),
        offset=np.array(offset, dtype=np.int64),
        size=np.array(size, dtype=np.int64),
    )


_HF_TABLES: dict[tuple[str, str, str], object] = {}


def _hf_table(folder: str, split: str, column: str):
    """A saved Hugging Face dataset (memory-mapped Arrow), its image column left as bytes;
    opened once per process (each worker maps the same files)."""
    key = (folder, split, column)
    if key not in _HF_TABLES:
        import datasets

        loaded = datasets.load_from_disk(folder)
        table = loaded[split] if split else loaded
        _HF_TABLES[key] = table.cast_column(column, datasets.Image(decode=False))
    return _HF_TABLES[key]


def is_hf_dataset(path: Path) -> bool:
    """A folder that Hugging Face ``save_to_disk`` wrote (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def list_hf(path: Path, label_column: str | None = "label") -> dict[str, Records]:
    """The records of a saved Hugging Face dataset, per split ("" for a single Dataset): the
    rows of its image column (the first column of Image type), labelled from
    ``label_column`` where it has one. Needs the ``datasets`` package."""
    try:
        import datasets
    except ImportError as err:
        raise GenflowError(
            f"{path} is a Hugging Face dataset; reading it needs the datasets package: "
            'pip install "genflow[hf]"'
        ) from err
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a folder datasets cannot read: one sentence naming it
        raise GenflowError(
            f"{path} cannot be read as a saved Hugging Face dataset ({first_line(err)})"
        ) from err
    tables = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    out = {}
    for split, table in tables.items():
        images = [k for k, v in table.features.items() if isinstance(v, datasets.Image)]
        if not images:
            raise GenflowError(
                f"{path}{f' (split {split})' if split else ''} has no image column; its "
                f"columns: {', '.join(table.features)}"
            )
        labels = None
        if label_column and label_column in table.features:
            labels = np.asarray(table[label_column], dtype=np.int64)
        out[split] = Records(
            np.array([], dtype=bytes),
            labels,
            hf=(str(path), split, images[0]),
            rows=np.arange(len(table), dtype=np.int64),
        )
    return out


def list_source(path: Path, fmt: str) -> Records:
    """The records at ``path``: a folder of images, or a folder of ``*.tar`` shards (or one
    shard); ``fmt`` auto picks tar where there are shards."""
    if fmt not in FORMATS:
        raise GenflowError(f"dataset.format={fmt} is not valid; valid: {', '.join(FORMATS)}")
    if fmt == "hf" or (fmt == "auto" and path.is_dir() and is_hf_dataset(path)):
        splits = list_hf(path)
        if len(splits) != 1:
            raise GenflowError(
                f"{path} holds the splits {', '.join(splits)}; name them with dataset.train "
                "and dataset.test (and dataset.val)"
            )
        return next(iter(splits.values()))
    if path.is_file() and path.suffix == ".tar":
        return list_shards([path])
    if not path.is_dir():
        raise GenflowError(
            f"{path.resolve()} does not exist; set dataset.path to a folder of images (one "
            "sub-folder per class, or none) or of WebDataset .tar shards"
        )
    shards = sorted(path.glob("*.tar"))
    if fmt == "tar" or (fmt == "auto" and shards):
        if not shards:
            raise GenflowError(f"dataset.format=tar but {path} holds no .tar shards")
        return list_shards(shards)
    return list_folder(path)


@dataclass(frozen=True)
class Decoding:
    """How a record becomes a uint8 (C, H, W) tensor with values in [0, 2**n_bits)."""

    image_size: int
    channels: int
    n_bits: int = 8
    resize: bool = True  # resize the short side and centre-crop; false: must be image_size
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width), first

    def __call__(self, data: bytes) -> Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if grey != (self.channels == 1) and not self.resize:
                kinds = ("colour", "greyscale") if self.channels == 1 else ("greyscale", "colour")
                raise ValueError(
                    f"a {kinds[0]} ({image.mode}) image in a {kinds[1]} set "
                    f"(dataset.channels={self.channels})"
                )
            image = image.convert("L" if self.channels == 1 else "RGB")
            if self.crop is not None:
                top, left, height, width = self.crop
                if top + height > image.size[1] or left + width > image.size[0]:
                    raise ValueError(
                        f"{image.size[0]}x{image.size[1]} is too small for dataset.crop="
                        f"{list(self.crop)} (top, left, height, width)"
                    )
                image = image.crop((left, top, left + width, top + height))
            if not self.resize and image.size != (self.image_size, self.image_size):
                raise ValueError(
                    f"{image.size[0]}x{image.size[1]}, not {self.image_size}x{self.image_size} "
                    "(dataset.image_size; dataset.resize=true resizes)"
                )
            x = F.pil_to_tensor(image)
        if self.resize:
            x = F.center_crop(F.resize(x, self.image_size, antialias=True), self.image_size)
        return x >> (8 - self.n_bits) if self.n_bits < 8 else x


class _Examples(torch.utils.data.Dataset):
    """What a worker decodes: item (position, flip, tag) -> (image or None, position, tag,
    why it was skipped or None)."""

    def __init__(self, records: Records, decode: Decoding):
        self.records, self.decode = records, decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item):
        position, flip, tag = item
        try:
            x = self.decode(self.records.read(position))
        except Exception as err:  # any failure to read or decode one record
            return None, position, tag, f"{self.records.name(position)}: {first_line(err)}"
        return (x.flip(-1) if flip else x), position, tag, None


def _collate(items):
    kept = [i for i in items if i[0] is not None]
    images = torch.stack([i[0] for i in kept]) if kept else None
    positions = torch.tensor([i[1] for i in kept], dtype=torch.int64)
    return images, positions, items[0][2], [i[3] for i in items if i[3] is not None]


class StreamSplit:
    """One split of a streamed dataset: its records, decoded as they are read.

    It answers what the rest of genflow asks of a split tensor (``len``, ``shape``,
    ``dim()``, ``device``, ``to(device)``, and a leading slice such as ``val[:64]`` for
    pictures, decoded in this process); evaluation and training read it in batches through
    worker processes (``batches``).
    """

    def __init__(
        self,
        records: Records,
        decode: Decoding,
        num_workers: int = 2,
        strict: bool = False,
        device: torch.device | str = "cpu",
        flip: bool = False,
    ):
        self.records, self.decode = records, decode
        self.num_workers, self.strict = int(num_workers), bool(strict)
        self.device = torch.device(device)
        self.flip = bool(flip)  # training draws flip its examples left-right at random

    def __len__(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> torch.Size:
        size = self.decode.image_size
        return torch.Size((len(self), self.decode.channels, size, size))

    def dim(self) -> int:
        return 4

    def is_floating_point(self) -> bool:
        return False

    def to(self, device) -> StreamSplit:
        return StreamSplit(
            self.records, self.decode, self.num_workers, self.strict, device, self.flip
        )

    @property
    def labels(self) -> Tensor | None:
        labels = self.records.labels
        return None if labels is None else torch.from_numpy(labels)

    def __getitem__(self, key) -> Tensor:
        """The examples at a slice or a sequence of positions, decoded in this process."""
        if isinstance(key, slice):
            positions = list(range(*key.indices(len(self))))
        elif isinstance(key, int | Tensor | np.ndarray | list | tuple):
            positions = torch.as_tensor(key, dtype=torch.int64).reshape(-1).tolist()
        else:
            raise TypeError(f"a streamed split is read at a slice or positions, not {key!r}")
        items = [_Examples(self.records, self.decode)[(p, False, None)] for p in positions]
        images, _, _, skipped = _collate(items)
        self._skipped(skipped, "examples read one by one")
        if images is None:
            size = self.decode.image_size
            return torch.zeros(0, self.decode.channels, size, size, dtype=torch.uint8)
        images = images.to(self.device)
        return images[0] if isinstance(key, int) else images

    def _skipped(self, skipped: list[str], where: str) -> None:
        for why in skipped:
            if self.strict:
                raise GenflowError(
                    f"record {why} (in {where}); dataset.strict=true stops here: replace or "
                    "remove it, or set dataset.strict=false to skip such records"
                )
            log.warning("skipped an unreadable record in %s: %s", where, why)

    def loader(self, order) -> torch.utils.data.DataLoader:
        """A DataLoader whose batches are the lists of (position, flip, tag) that ``order``
        yields, decoded by worker processes (in this process with no workers)."""
        workers = self.num_workers
        return torch.utils.data.DataLoader(
            _Examples(self.records, self.decode),
            batch_sampler=order,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None,
            # its own generator for the workers' seeds: starting a loader must not draw from
            # the global RNG, whose stream (dequantization noise) a resume reproduces
            generator=torch.Generator().manual_seed(0),
        )

    def batches(self, positions: range, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The examples at ``positions`` in order, ``batch_size`` at a time, as (images on
        the device, their positions); unreadable records are left out of their batch."""
        order = [
            [(p, False, None) for p in positions[s : s + batch_size]]
            for s in range(0, len(positions), batch_size)
        ]
        for images, where, _, skipped in self.loader(order):
            self._skipped(skipped, "evaluation")
            if images is not None:
                yield images.to(self.device, non_blocking=True), where


class _TrainOrder:
    """The micro-batches this rank draws from ``start`` on, as ``EpochOrder`` picks their
    examples (the in-memory path's); ``next_index`` says which micro-batch comes after j.
    Flips are drawn per epoch from (seed, epoch), so they too are the same whatever the
    workers."""

    def __init__(self, order: EpochOrder, start: int, next_index, flip: bool):
        self.order, self.start, self.next_index, self.flip = order, start, next_index, flip

    def __iter__(self):
        j, epoch, flips = self.start, -1, None
        seed, n = self.order.seed, self.order.n
        while True:
            if self.flip and j // self.order.steps_per_epoch != epoch:
                epoch = j // self.order.steps_per_epoch
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777_777)
                flips = torch.rand(n, generator=g) < 0.5
            index = self.order.positions(j).tolist()
            yield [(p, bool(flips[p]) if self.flip else False, j) for p in index]
            j = self.next_index(j)


def rank_order(accumulate_steps: int, world_size: int) -> Callable[[int], int]:
    """The global micro-batch a rank draws after micro-batch j: rank r of W draws
    (s * W + r) * n + i at micro-batch i < n of step s, so after i < n - 1 comes j + 1, and
    after the last the first of its next step, ((s + 1) * W + r) * n."""
    n, world = accumulate_steps, world_size
    return lambda j: j + 1 if j % n != n - 1 else j + 1 + (world - 1) * n


class StreamBatches:
    """Training batches of a StreamSplit, by global micro-batch index, like EpochBatches.

    The loader runs ahead in worker processes along the indices this rank will ask for
    (``next_index``); asking for any other index (the first call, a resume, a roll-back)
    starts it again from there. ``skipped`` counts the records left out since it was last
    read (``take_skipped``).
    """

    def __init__(
        self,
        split: StreamSplit,
        batch_size: int,
        seed: int,
        next_index: Callable[[int], int] = lambda j: j + 1,
        labels: Tensor | None = None,
    ):
        self.order = EpochOrder(len(split), batch_size, seed)
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.next_index = next_index
        self.labels = labels
        self.steps_per_epoch = self.order.steps_per_epoch
        self._iterator = None
        self._expected: int | None = None
        self._last: tuple[int, tuple[Tensor, Tensor | None]] | None = None
        self.skipped = 0
        self.restarts = 0  # loaders started: once, unless asked off this rank's order

    def __call__(self, step: int) -> Tensor:
        return self.labeled(step)[0]

    def restart(self, index: int) -> None:
        order = _TrainOrder(self.order, index, self.next_index, self.split.flip)
        self._iterator = iter(self.split.loader(order))
        self._expected = index
        self.restarts += 1

    def labeled(self, index: int) -> tuple[Tensor, Tensor | None]:
        if self._last is not None and self._last[0] == index:  # asked again (initialisation)
            return self._last[1]
        if index != self._expected:
            self.restart(index)
        images, positions, tag, skipped = next(self._iterator)
        assert tag == index, (tag, index)
        self._expected = self.next_index(index)
        self.split._skipped(skipped, f"training micro-batch {index}")
        self.skipped += len(skipped)
        if images is None:
            raise GenflowError(
                f"every record of training micro-batch {index} was unreadable; the data under "
                "dataset.path needs checking"
            )
        x = images.to(self.split.device, non_blocking=True)
        y = None if self.labels is None else self.labels[positions.to(self.labels.device)]
        self._last = (index, (x, y))
        return x, y

    def take_skipped(self) -> int:
        n, self.skipped = self.skipped, 0
        return n

    def close(self) -> None:
        self._iterator, self._expected, self._last = None, None, None
