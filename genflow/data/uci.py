"""The five density-estimation benchmarks of the MAF and NSF papers, from their usual files.

POWER, GAS, HEPMASS, MINIBOONE and BSDS300 as Papamakarios et al. (2017, arXiv:1705.07057)
preprocessed them, read from the layout of that paper's data release under ``dataset.root``
(``GENFLOW_DATA``)::

    power/data.npy              (N, 8) household power readings
    gas/ethylene_CO.parquet     the ethylene-CO sensor table (or .csv); the release's
                                ethylene_CO.pickle is refused: a pickle can run code
    hepmass/1000_train.csv      the HEPMASS "1000" tables with their header rows
    hepmass/1000_test.csv
    miniboone/data.npy          (N, 43) particle-identification features
    BSDS300/BSDS300.hdf5        datasets train, validation, test of (N, 63) patches

Each loader repeats the reference code's preprocessing step for step (its column drops,
noise, normalisation and splits), so a test NLL here is in the units the papers report
(nats per example of the preprocessed data). Nothing is downloaded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genflow.errors import GenflowError, first_line

# dataset name -> (files under dataset.root, the data width after preprocessing)
FILES = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.parquet", "gas/ethylene_CO.csv"),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
GAS_PICKLE = "gas/ethylene_CO.pickle"


def _root(cfg) -> Path:
    return Path(str(cfg.root)).expanduser()


def _need(cfg, relative: str) -> Path:
    path = _root(cfg) / relative
    if not path.is_file():
        raise GenflowError(
            f"dataset '{cfg.name}' reads {path} (dataset.root={cfg.root}), which does not "
            "exist; put the MAF paper's preprocessed data there (see conf/dataset/"
            f"{cfg.name}.yaml)"
        )
    return path


def _npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise GenflowError(f"{path} could not be read as a .npy array ({first_line(err)})") from err
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise GenflowError(
            f"{path} holds a {array.dtype} array of shape {array.shape}; expected a 2-D "
            "numeric table"
        )
    return array.astype(np.float64)


def _table(path: Path) -> tuple[list[str], np.ndarray]:
    """Names and values of a .csv (first row the names) or .parquet table."""
    from omegaconf import OmegaConf

    from genflow.data.tabular import read_table

    table = read_table(OmegaConf.create({"name": "uci", "path": str(path), "key": None}))
    return table.names, table.values


def _cut_last(data: np.ndarray, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The reference code's split: the last ``int(fraction * N)`` rows, and the rest."""
    n = int(fraction * data.shape[0])
    return data[:-n], data[-n:]


def _power(cfg) -> tuple[np.ndarray, ...]:
    """Shuffled with RandomState(42); columns 3 and 1 dropped; uniform noise added per column
    (0.001 gap, 0.01 voltage, 1 on the three sub-meterings, none on time); 10% test, 10% of
    the rest validation; normalised with the mean and std of train and validation."""
    data = _npy(_need(cfg, FILES["power"][0]))
    if data.shape[1] != 8:
        raise GenflowError(f"power/data.npy has {data.shape[1]} columns; the release has 8")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage = 0.01 * rng.rand(n, 1)
    gap = 0.001 * rng.rand(n, 1)
    sub_metering = rng.rand(n, 3)
    data = data + np.hstack((gap, voltage, sub_metering, np.zeros((n, 1))))
    rest, test = _cut_last(data)
    train, val = _cut_last(rest)
    return _normalised(train, val, test)


def _normalised(train, val, test, ddof: int = 0):
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0, ddof=ddof)
    return tuple((part - mu) / s for part in (train, val, test))


def _gas(cfg) -> tuple[np.ndarray, ...]:
    """Columns Meth, Eth and Time dropped; then, while some column correlates above 0.98 with
    another, the first such column dropped; normalised with the whole table's mean and
    (sample) std; 10% test, 10% of the rest validation."""
    root = _root(cfg)
    found = [root / f for f in FILES["gas"] if (root / f).is_file()]
    if not found:
        if (root / GAS_PICKLE).is_file():
            raise GenflowError(
                f"{root / GAS_PICKLE} is a pickle, which can run code when read, so genflow "
                'does not read it; convert it once where you trust it: python -c "import '
                f"pandas as pd; pd.read_pickle('{root / GAS_PICKLE}').to_parquet('"
                f"{root / FILES['gas'][0]}')\""
            )
        _need(cfg, FILES["gas"][0])
    names, values = _table(found[0])
    keep = [
        i
        for i, name in enumerate(names)
        if name not in ("Meth", "Eth", "Time") and not name.startswith("__index_level")
    ]
    names, data = [names[i] for i in keep], values[:, keep]
    while True:
        counts = (np.corrcoef(data, rowvar=False) > 0.98).sum(axis=1)
        if not (counts > 1).any():
            break
        drop = int(np.flatnonzero(counts > 1)[0])
        data = np.delete(data, drop, axis=1)
        del names[drop]
    data = (data - data.mean(axis=0)) / data.std(axis=0, ddof=1)
    rest, test = _cut_last(data)
    train, val = _cut_last(rest)
    return train, val, test


def _hepmass(cfg) -> tuple[np.ndarray, ...]:
    """The signal rows (first column 1) of both tables, that column dropped (and the test
    table's last column, which the reference code drops as malformed); normalised with the
    training table's mean and (sample) std; the features whose smallest value occurs more
    than 5 times in training dropped (the reference code's rule); the last 10% of training
    for validation."""
    tables = []
    for relative in FILES["hepmass"]:
        _, values = _table(_need(cfg, relative))
        tables.append(values[values[:, 0] == 1][:, 1:])
    train, test = tables
    test = test[:, :-1]
    if train.shape[1] != test.shape[1]:
        raise GenflowError(
            f"hepmass: the training table has {train.shape[1]} features and the test table "
            f"{test.shape[1]} after the reference code's column drops; expected the same"
        )
    mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
    train, test = (train - mu) / s, (test - mu) / s
    keep = [j for j in range(train.shape[1]) if Counter(train[:, j])[train[:, j].min()] <= 5]
    train, test = train[:, keep], test[:, keep]
    train, val = _cut_last(train)
    return train, val, test


def _miniboone(cfg) -> tuple[np.ndarray, ...]:
    """10% test, 10% of the rest validation (in file order); normalised with the mean and
    std of train and validation."""
    data = _npy(_need(cfg, FILES["miniboone"][0]))
    rest, test = _cut_last(data)
    train, val = _cut_last(rest)
    return _normalised(train, val, test)


def _bsds300(cfg) -> tuple[np.ndarray, ...]:
    """The release's splits as stored (patches already preprocessed)."""
    path = _need(cfg, FILES["bsds300"][0])
    try:
        import h5py
    except ImportError as err:
        raise GenflowError(
            'reading BSDS300.hdf5 needs h5py, which is not installed: pip install -e ".[tabular]"'
        ) from err
    try:
        with h5py.File(path, "r") as handle:
            missing = [k for k in ("train", "validation", "test") if k not in handle]
            if missing:
                raise GenflowError(f"{path} lacks the dataset '{missing[0]}'")
            return tuple(
                np.asarray(handle[k], dtype=np.float64) for k in ("train", "validation", "test")
            )
    except OSError as err:
        raise GenflowError(f"{path} could not be read as HDF5 ({first_line(err)})") from err


PREPROCESS: dict[str, Callable] = {
    "power": _power,
    "gas": _gas,
    "hepmass": _hepmass,
    "miniboone": _miniboone,
    "bsds300": _bsds300,
}
UCI_DATASETS = tuple(PREPROCESS)


def load_uci(cfg):
    """A benchmark's train / validation / test splits, preprocessed as in the MAF paper."""
    from genflow.data.datasets import DataSplits

    parts = PREPROCESS[cfg.name](cfg)
    width = int(cfg.shape[0])
    for name, part in zip(("training", "validation", "test"), parts, strict=True):
        if part.ndim != 2 or part.shape[1] != width:
            raise GenflowError(
                f"dataset '{cfg.name}': after the MAF paper's preprocessing the {name} split "
                f"has shape {part.shape}, but the benchmark has {width} features; is "
                f"{_root(cfg)} the paper's data release?"
            )
        if len(part) < 2:
            raise GenflowError(f"dataset '{cfg.name}': the {name} split has {len(part)} rows")
        if not np.isfinite(part).all():
            raise GenflowError(
                f"dataset '{cfg.name}': the {name} split holds NaN or infinite values after "
                "preprocessing (a constant column?)"
            )
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return DataSplits(*(as_tensor(p) for p in parts))
