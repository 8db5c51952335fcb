"""Tables of real values: ``dataset=tabular`` reads a user's file (.npy, .csv, .parquet, .h5),
the bundled presets read scikit-learn's real tables (offline).

The data columns (``dataset.columns``, names or 0-based indices; every column when null) are
split at random into train / validation / test (``val_fraction``, ``test_fraction``,
``split_seed``). The splits stay in the data's own units; the per-column mean and standard
deviation of the training split go to the model, which standardises inside its density and
counts the log-det, so every NLL is in nats of the data as stored. Nothing here runs code
from a file: .npy is read without pickles, and no pickle format is accepted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

from genflow.errors import GenflowError, first_line

SUFFIXES = (".npy", ".csv", ".parquet", ".h5", ".hdf5")
# scikit-learn's bundled real-valued tables (no download); their columns are all continuous
SKLEARN_TABLES = {"breast_cancer": "load_breast_cancer", "wine": "load_wine"}
SKLEARN_PREFIX = "sklearn:"
TABLE_DATASETS = ("tabular", *SKLEARN_TABLES)


@dataclass
class Table:
    names: list[str]
    values: np.ndarray | None = None  # (N, K) float64; None when only the header was read


def _source(cfg) -> str:
    path = cfg.get("path")
    if path in (None, "", "???"):
        raise GenflowError(
            f"dataset '{cfg.name}' needs dataset.path: a .npy, .csv, .parquet or .h5 file "
            "with one row per example"
        )
    return str(path)


def _file(cfg) -> Path:
    path = Path(_source(cfg)).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise GenflowError(
            f"dataset.path={_source(cfg)}: genflow reads tables from {', '.join(SUFFIXES)} "
            "files (no pickles: they can run code)"
        )
    if not path.is_file():
        raise GenflowError(f"dataset.path={_source(cfg)}: no such file ({path.resolve()})")
    return path


def _optional(module: str, suffix: str):
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError as err:
        raise GenflowError(
            f"reading {suffix} tables needs {module}, which is not installed: "
            f'pip install -e ".[tabular]"'
        ) from err


def _h5_array(handle, key):
    import h5py

    if key is None:
        names = [n for n, v in handle.items() if isinstance(v, h5py.Dataset)]
        if len(names) != 1:
            raise GenflowError(
                f"the .h5 file holds {len(names)} datasets at its top level "
                f"({', '.join(names[:6]) or 'none'}); name one with dataset.key"
            )
        key = names[0]
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        raise GenflowError(f"dataset.key={key}: the .h5 file has no dataset of that name")
    return handle[key]


def read_table(cfg, header_only: bool = False) -> Table:
    """The table ``cfg`` names, as float64 values and column names (indices as names where
    the format has none). ``header_only`` reads only what the names and width need."""
    source = _source(cfg)
    if source.startswith(SKLEARN_PREFIX):
        return _sklearn_table(source[len(SKLEARN_PREFIX) :])
    path = _file(cfg)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return _numbered(array, header_only)
        if suffix == ".csv":
            return _csv_table(path, header_only)
        if suffix == ".parquet":
            pq = _optional("pyarrow.parquet", suffix)
            names = list(pq.read_schema(path).names)
            if header_only:
                return Table(names)
            columns = pq.read_table(path).columns
            return Table(
                names,
                np.stack(
                    [_numeric(c.to_numpy(), n) for c, n in zip(columns, names, strict=True)], axis=1
                ),
            )
        h5py = _optional("h5py", suffix)
        with h5py.File(path, "r") as handle:
            array = _h5_array(handle, cfg.get("key"))
            return _numbered(array, header_only)
    except GenflowError:
        raise
    except (OSError, ValueError, TypeError) as err:
        raise GenflowError(
            f"dataset.path={source} could not be read as a table ({first_line(err)})"
        ) from err


def _numeric(values: np.ndarray, name: str) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise GenflowError(
            f"column '{name}' is not numeric ({values.dtype}); tables must hold numbers"
        )
    return values.astype(np.float64)


def _numbered(array, header_only: bool) -> Table:
    if array.ndim != 2:
        raise GenflowError(
            f"a table must be 2-D (rows, columns); the array has shape {tuple(array.shape)}"
        )
    names = [str(i) for i in range(array.shape[1])]
    return Table(names, None if header_only else _numeric(np.asarray(array[...]), "0"))


def _csv_table(path: Path, header_only: bool) -> Table:
    """A comma-separated table; a first row that is not all numbers holds the names. Empty
    fields and NA read as NaN (and are refused with the row named)."""
    with path.open(newline="") as handle:
        first = next(csv.reader(handle), None)
    if not first:
        raise GenflowError(f"{path} is empty")

    def number(field: str) -> bool:
        try:
            float(field)
            return True
        except ValueError:
            return False

    has_header = not all(number(f) for f in first)
    names = (
        [f.strip().lstrip("#").strip() for f in first]
        if has_header
        else [str(i) for i in range(len(first))]
    )
    if header_only:
        return Table(names)
    values = np.genfromtxt(
        path,
        delimiter=",",
        skip_header=int(has_header),
        dtype=np.float64,
        ndmin=2,
        missing_values=("", "NA", "NaN", "nan"),
        filling_values=np.nan,
    )
    if values.shape[1] != len(names):
        raise GenflowError(
            f"{path}: rows have {values.shape[1]} fields but the first row has {len(names)}"
        )
    return Table(names, values)


def _sklearn_table(name: str) -> Table:
    if name not in SKLEARN_TABLES:
        raise GenflowError(
            f"dataset.path={SKLEARN_PREFIX}{name}: scikit-learn's bundled tables are "
            f"{', '.join(SKLEARN_TABLES)}"
        )
    from sklearn import datasets

    bunch = getattr(datasets, SKLEARN_TABLES[name])()
    return Table([str(n) for n in bunch.feature_names], np.asarray(bunch.data, dtype=np.float64))


def column_indices(names: list[str], wanted, key: str) -> list[int]:
    """``wanted`` (names or 0-based indices) as indices into ``names``; one sentence for one
    that the table lacks."""
    indices = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise GenflowError(
                    f"{key} names column {item}, but the table has columns 0..{len(names) - 1}"
                )
            indices.append(item)
        elif str(item) in names:
            indices.append(names.index(str(item)))
        else:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise GenflowError(
                f"{key} names column '{item}', which the table lacks (its columns: {shown})"
            )
    if len(set(indices)) != len(indices):
        raise GenflowError(f"{key} names a column twice")
    return indices


def context_columns(cfg, names: list[str]) -> list[int]:
    """The context columns (``dataset.context_columns``): what the density is conditioned on."""
    return column_indices(names, list(cfg.get("context_columns") or []), "dataset.context_columns")


def data_columns(cfg, names: list[str]) -> list[int]:
    """The data columns: ``dataset.columns``, or every column that is not a context column."""
    wanted = cfg.get("columns")
    context = context_columns(cfg, names)
    if wanted is None:
        return [i for i in range(len(names)) if i not in context]
    if len(wanted) == 0:
        raise GenflowError("dataset.columns is empty; name the data columns, or null for all")
    columns = column_indices(names, list(wanted), "dataset.columns")
    both = [names[i] for i in columns if i in context]
    if both:
        raise GenflowError(
            f"column '{both[0]}' is in both dataset.columns and dataset.context_columns"
        )
    return columns


def complete_table_config(dataset_cfg) -> None:
    """A table's ``dataset.shape`` from its header ([the number of data columns]), and its
    file's path made absolute (so eval and sample find it from anywhere)."""
    if dataset_cfg.get("name") not in TABLE_DATASETS:
        return
    source = _source(dataset_cfg)
    with open_dict(dataset_cfg):
        if not source.startswith(SKLEARN_PREFIX):
            dataset_cfg.path = str(_file(dataset_cfg).resolve())
        if dataset_cfg.get("shape") is None or dataset_cfg.get("context_features") is None:
            names = read_table(dataset_cfg, header_only=True).names
            columns = data_columns(dataset_cfg, names)
            if not columns:
                raise GenflowError("every column is a context column; leave some data to model")
            dataset_cfg.shape = [len(columns)]
            dataset_cfg.context_features = len(context_columns(dataset_cfg, names)) or None


def _split_sizes(n: int, cfg) -> tuple[int, int]:
    val_fraction, test_fraction = float(cfg.val_fraction), float(cfg.test_fraction)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GenflowError(
            "dataset.val_fraction and dataset.test_fraction must be in (0, 1) with a sum "
            f"below 1, got {val_fraction} and {test_fraction}"
        )
    n_val, n_test = max(1, int(n * val_fraction)), max(1, int(n * test_fraction))
    if n - n_val - n_test < 2:
        raise GenflowError(f"the table has {n} rows: too few for train, validation and test splits")
    return n_val, n_test


def load_table(cfg):
    """A table dataset's splits, with the training split's standardisation."""
    from genflow.data.datasets import DataSplits

    table = read_table(cfg)
    columns = data_columns(cfg, table.names)
    context = context_columns(cfg, table.names)
    used = columns + context
    values = table.values[:, used]
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise GenflowError(
            f"dataset.path={_source(cfg)}: column '{table.names[used[col]]}' holds "
            f"{'NaN' if np.isnan(values[row, col]) else 'an infinite value'} in row {row} "
            f"({int(bad.any(axis=1).sum())} rows hold one); drop or fill them first"
        )
    n_val, n_test = _split_sizes(len(values), cfg)
    order = np.random.default_rng(int(cfg.split_seed)).permutation(len(values))
    values = values[order]
    train = values[: -(n_val + n_test)]
    loc, scale = train.mean(axis=0), train.std(axis=0)
    constant = np.flatnonzero(scale <= 1e-12 * np.maximum(1.0, np.abs(loc)))
    if len(constant):
        name = table.names[used[int(constant[0])]]
        which = "dataset.columns" if constant[0] < len(columns) else "dataset.context_columns"
        raise GenflowError(
            f"dataset.path={_source(cfg)}: column '{name}' is constant on the training split "
            f"(every value {train[0, constant[0]]:g}); a density of it does not exist, leave "
            f"it out of {which}"
        )
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    parts = {
        "train": values[: -(n_val + n_test)],
        "val": values[-(n_val + n_test) : -n_test],
        "test": values[-n_test:],
    }
    d = len(columns)
    splits = DataSplits(*(as_tensor(parts[k][:, :d]) for k in ("train", "val", "test")))
    if bool(cfg.get("standardize", True)):
        splits.standardization = (torch.from_numpy(loc[:d]), torch.from_numpy(scale[:d]))
    if context:
        splits.context = {k: as_tensor(v[:, d:]) for k, v in parts.items()}
        # the context is always standardised inside the model (no log-det: it is given)
        splits.context_standardization = (torch.from_numpy(loc[d:]), torch.from_numpy(scale[d:]))
    return splits
