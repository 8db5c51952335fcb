"""Tables: every reader on a small file of its format written here, column choice, the
training split's standardisation kept by the model with its log-det counted (so an NLL is in
the data's own units), bad tables refused with one sentence, and the CLI end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import RUN_TINY, last_json_line, run_dirs, run_genflow
from omegaconf import OmegaConf

from genflow.cli import main
from genflow.data.datasets import load_dataset
from genflow.data.tabular import complete_table_config, read_table
from genflow.models.nsf import NSF

ROWS, NAMES = 60, ["a", "b", "c", "d"]


def _values(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(ROWS, 4))
    return base * np.array([1.0, 10.0, 0.01, 3.0]) + np.array([0.0, 100.0, -5.0, 2.0])


def _write(tmp_path, fmt: str, values: np.ndarray, names=NAMES):
    if fmt == "npy":
        path = tmp_path / "table.npy"
        np.save(path, values)
    elif fmt in ("csv", "csv_plain"):
        path = tmp_path / f"{fmt}.csv"
        rows = [",".join(f"{v!r}" for v in row) for row in values.tolist()]
        header = [",".join(names)] if fmt == "csv" else []
        path.write_text("\n".join(header + rows) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "table.parquet"
        pq.write_table(pa.table({n: values[:, i] for i, n in enumerate(names)}), path)
    else:
        import h5py

        path = tmp_path / "table.h5"
        with h5py.File(path, "w") as handle:
            handle["rows"] = values
    return path


def _cfg(path, **extra):
    cfg = {
        "name": "tabular",
        "path": str(path),
        "key": None,
        "columns": None,
        "standardize": True,
        "val_fraction": 0.1,
        "test_fraction": 0.2,
        "split_seed": 0,
        "shape": None,
        "levels": None,
    }
    cfg.update(extra)
    return OmegaConf.create(cfg)


@pytest.mark.parametrize("fmt", ["npy", "csv", "csv_plain", "parquet", "h5"])
def test_every_reader_gives_the_values_and_names(tmp_path, fmt):
    values = _values()
    table = read_table(_cfg(_write(tmp_path, fmt, values)))
    np.testing.assert_allclose(table.values, values, rtol=0, atol=0)
    named = fmt in ("csv", "parquet")
    assert table.names == (NAMES if named else ["0", "1", "2", "3"])
    header = read_table(_cfg(_write(tmp_path, fmt, values)), header_only=True)
    assert header.names == table.names and header.values is None


def test_columns_by_name_or_index_and_the_shape_from_the_header(tmp_path):
    path = _write(tmp_path, "csv", _values())
    cfg = _cfg(path, columns=["d", "b"])
    complete_table_config(cfg)
    assert list(cfg.shape) == [2] and cfg.path == str(path.resolve())
    splits = load_dataset(cfg)
    assert (
        splits.train.shape == (42, 2)
        and splits.val.shape == (6, 2)
        and splits.test.shape == (12, 2)
    )
    by_index = load_dataset(_cfg(path, columns=[3, 1], shape=[2]))
    torch.testing.assert_close(by_index.train, splits.train)
    every = torch.cat((splits.train, splits.val, splits.test))
    expected = torch.from_numpy(_values()[:, [3, 1]]).float()
    # the same rows, in the split's random order
    torch.testing.assert_close(every[every[:, 0].argsort()], expected[expected[:, 0].argsort()])


def test_the_standardisation_is_the_training_split_s_and_its_log_det_is_counted(tmp_path):
    """The model keeps the training split's mean and standard deviation; log p(x) in the
    data's units is log p((x - m) / s) - sum(log s), which a mutant dropping the term fails."""
    cfg = _cfg(_write(tmp_path, "npy", _values()), shape=[4])
    splits = load_dataset(cfg)
    loc, scale = splits.standardization
    torch.testing.assert_close(loc.float(), splits.train.mean(0))
    torch.testing.assert_close(scale.float(), splits.train.std(0, unbiased=False))
    torch.manual_seed(0)
    raw = NSF((4,), num_layers=2, hidden_features=8).eval()
    kept = NSF((4,), num_layers=2, hidden_features=8).eval()
    kept.load_state_dict(raw.state_dict())
    kept.set_data_standardization(loc, scale)
    x = splits.test
    standardised = (x - loc.float()) / scale.float()
    expected = raw.log_prob(standardised) - torch.log(scale).sum().float()
    torch.testing.assert_close(kept.log_prob(x), expected, atol=1e-4, rtol=1e-5)
    # the identity flow of standardised data is the Gaussian with that mean and scale
    gaussian = torch.distributions.Normal(loc.float(), scale.float()).log_prob(x).sum(1)
    identity = NSF((4,), num_layers=1, hidden_features=8, linear="none").eval()
    identity.set_data_standardization(loc, scale)
    torch.testing.assert_close(identity.log_prob(x), gaussian, atol=1e-4, rtol=1e-5)
    # samples come back in the data's units, and the standardisation is in the state dict
    assert (identity.sample(2000).mean(0) - loc.float()).abs().max() < 0.2 * scale.max()
    restored = NSF((4,), num_layers=1, hidden_features=8, linear="none")
    restored.load_state_dict(identity.state_dict())
    torch.testing.assert_close(restored.standardize.scale, identity.standardize.scale)


def test_a_flow_state_dict_from_before_the_standardisation_loads_as_the_identity():
    model = NSF((2,), num_layers=1, hidden_features=8)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("standardize.")}
    model.set_data_standardization(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    model.load_state_dict(old)
    torch.testing.assert_close(model.standardize.loc, torch.zeros(2))
    torch.testing.assert_close(model.standardize.scale, torch.ones(2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan", "column 'c' holds NaN in row 7 (1 rows hold one); drop or fill them first"),
        ("constant", "column 'b' is constant on the training split (every value 4)"),
        (
            "columns",
            "dataset.columns names column 'z', which the table lacks (its columns: a, b, c, d)",
        ),
        ("index", "dataset.columns names column 9, but the table has columns 0..3"),
        ("suffix", "genflow reads tables from .npy, .csv, .parquet, .h5, .hdf5 files (no pickles"),
        ("missing", "no such file"),
        ("text", "column 'c' holds NaN in row 3"),
    ],
)
def test_bad_tables_are_one_sentence(tmp_path, change, message):
    values = _values()
    columns = None
    if change == "nan":
        values[7, 2] = np.nan
    if change == "constant":
        values[:, 1] = 4.0
    path = _write(tmp_path, "csv", values)
    if change == "text":
        lines = path.read_text().splitlines()
        fields = lines[4].split(",")
        fields[2] = "n/a"
        lines[4] = ",".join(fields)
        path.write_text("\n".join(lines) + "\n")
    if change == "columns":
        columns = ["a", "z"]
    if change == "index":
        columns = [0, 9]
    if change == "suffix":
        path = path.rename(tmp_path / "table.pkl")
    if change == "missing":
        path = tmp_path / "gone.csv"
    from genflow.errors import GenflowError

    with pytest.raises(GenflowError) as caught:
        cfg = _cfg(path, columns=columns)
        complete_table_config(cfg)
        load_dataset(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_table_on_the_command_line_exits_2_before_any_run_directory(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "csv", _values())
    code = main(
        ["train", "model=nsf", "dataset=tabular", f"dataset.path={path}", "dataset.columns=[a,q]"]
    )
    assert code == 2
    assert "dataset.columns names column 'q', which the table lacks" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_train_eval_sample_on_a_table_from_the_command_line(workdir):
    """genflow train model=nsf dataset=tabular dataset.path=... with nothing else, then eval
    and sample: eval's NLL is load_run's log_prob of the raw test rows as the file holds them,
    and the samples come out in the data's units."""
    values = _values()
    path = _write(workdir, "csv", values)
    tiny = ["model.hidden_features=8", "model.num_layers=2", *RUN_TINY]
    run_genflow(["train", "model=nsf", "dataset=tabular", f"dataset.path={path}", *tiny], workdir)
    (run,) = run_dirs(workdir)
    summary = last_json_line(run_genflow(["eval", f"run={run}"], workdir).stdout)
    assert summary["num_examples"] == 6 and math.isfinite(summary["nll"])
    import genflow

    loaded = genflow.load_run(run)
    test = torch.from_numpy(_values()).float()
    test = test[(test[:, None, :] == loaded.data("test")[None]).all(2).any(1)]  # rows as stored
    assert len(test) == 6
    nll = -loaded.log_prob(test).mean().item()
    assert abs(nll - summary["nll"]) < 1e-4
    sample = last_json_line(run_genflow(["sample", f"run={run}", "sample.n=50"], workdir).stdout)
    drawn = torch.load(sample["tensor"])
    assert drawn.shape == (50, 4) and torch.isfinite(drawn).all()
    # column b is around 100 with scale 10: the samples are in the data's units
    assert 60 < drawn[:, 1].mean() < 140
