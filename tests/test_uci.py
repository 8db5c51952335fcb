"""The MAF paper's five density benchmarks, read from small files the tests write in the
release's formats (never downloaded): the reference preprocessing's splits, column drops,
noise and normalisation, and one sentence for what is missing or malformed."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from genflow.data.datasets import load_dataset
from genflow.errors import GenflowError


def _cfg(name, root, width):
    return OmegaConf.create({"name": name, "root": str(root), "shape": [width], "levels": None})


def _splits(name, root, width):
    s = load_dataset(_cfg(name, root, width))
    return s.train.double().numpy(), s.val.double().numpy(), s.test.double().numpy()


def _reference_sizes(n):
    """The reference code's sizes: the last int(0.1 N) rows test, then the last 10% of the
    rest validation."""
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def test_power_drops_columns_adds_each_noise_and_normalises_on_train_and_val(tmp_path):
    n = 400
    rng = np.random.default_rng(0)
    data = np.zeros((n, 8))
    data[:, 0] = 10.0 * rng.integers(0, 2, n)  # gap: noise U[0, 0.001)
    data[:, 1] = 7.0  # dropped (constant: kept, it would make the normalisation NaN)
    data[:, 2] = 100.0 * rng.integers(0, 2, n)  # voltage: noise U[0, 0.01)
    data[:, 3] = -3.0  # dropped
    data[:, 4:7] = 10.0 * rng.integers(0, 2, (n, 3))  # sub-meterings: noise U[0, 1)
    data[:, 7] = rng.integers(0, 5, n)  # time: no noise
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", data)
    train, val, test = _splits("power", tmp_path, 6)
    assert (len(train), len(val), len(test)) == _reference_sizes(n)
    both = np.vstack((train, val))
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(both.std(0), 1.0, atol=1e-5)  # ddof 0, as the reference
    everything = np.vstack((train, val, test))
    assert len(np.unique(np.round(everything[:, 5], 5))) == 5  # time: untouched
    # each column's noise relative to the gap between its two values: 1e-4, 1e-4, 0.1
    for column, ratio in ((0, 1e-4), (1, 1e-4), (2, 0.1), (3, 0.1), (4, 0.1)):
        values = everything[:, column]
        low = values[values < values.mean()]
        gap = values.max() - low.min() - (low.max() - low.min())
        spread = (low.max() - low.min()) / gap
        assert 0.5 * ratio < spread < ratio, (column, spread)
    # rows shuffled with RandomState(42), as the reference: the time column follows
    order = np.random.RandomState(42).permutation(n)
    time = everything[:, 5]
    assert np.array_equal(
        np.argsort(np.argsort(time[:50], kind="stable"), kind="stable"),
        np.argsort(np.argsort(data[order[:50], 7], kind="stable"), kind="stable"),
    )


def _write_csv(path, names, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(rows.tolist())


def test_gas_drops_labels_time_and_correlated_columns_then_normalises(tmp_path):
    n = 300
    rng = np.random.default_rng(1)
    sensors = rng.normal(size=(n, 8)) * np.arange(1, 9) + np.arange(8)
    twin = sensors[:, 2] * 3.0 + 0.01 * rng.normal(size=n)  # correlated > 0.98 with sensor 2
    table = np.column_stack((np.arange(n), rng.normal(size=n), rng.normal(size=n), twin, sensors))
    names = ["Time", "Meth", "Eth", "twin", *(f"s{i}" for i in range(8))]
    (tmp_path / "gas").mkdir()
    _write_csv(tmp_path / "gas" / "ethylene_CO.csv", names, table)
    train, val, test = _splits("gas", tmp_path, 8)
    assert (len(train), len(val), len(test)) == _reference_sizes(n)
    everything = np.vstack((train, val, test))  # in file order
    # the first of the correlated pair (twin) went; the sensors stay, in order, normalised
    # with the whole table's mean and sample std (ddof 1, as pandas)
    expected = (sensors - sensors.mean(0)) / sensors.std(0, ddof=1)
    np.testing.assert_allclose(everything, expected, atol=1e-5)


def test_gas_refuses_the_pickle_and_says_how_to_convert_it(tmp_path):
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"\x80\x04not read")
    with pytest.raises(GenflowError, match=r"is a pickle, which can run code.*to_parquet"):
        load_dataset(_cfg("gas", tmp_path, 8))


def test_hepmass_keeps_signal_drops_discrete_features_and_normalises_with_train(tmp_path):
    rng = np.random.default_rng(2)

    def table(n, extra_column):
        label = rng.integers(0, 2, n).astype(float)
        smooth = rng.normal(size=(n, 21)) * 2.0 + 5.0
        lumpy = rng.normal(size=(n, 7))
        lumpy[: n // 4, :6] = -9.0  # the smallest value occurs more than 5 times: dropped
        columns = [label[:, None], smooth[:, :10], lumpy, smooth[:, 10:]]
        if extra_column:
            columns.append(rng.normal(size=(n, 1)))  # the test table's malformed last column
        return np.hstack(columns), smooth

    train_table, train_smooth = table(400, False)
    signal_rows = np.flatnonzero(train_table[:, 0] == 1)
    train_table[signal_rows[:6], 17] = -50.0  # the last lumpy feature: its minimum 6 times
    train_table[signal_rows[:5], 1] = -50.0  # a smooth one: its minimum 5 times, kept
    train_smooth[signal_rows[:5], 0] = -50.0
    test_table, _ = table(200, True)
    test_table[:7, 1:29] = train_table[train_table[:, 0] == 1][:7, 1:29]  # same rows as training
    test_table[:7, 0] = 1.0
    (tmp_path / "hepmass").mkdir()
    names = ["# label", *(f"f{i}" for i in range(27)), "mass"]
    _write_csv(tmp_path / "hepmass" / "1000_train.csv", names, train_table)
    _write_csv(tmp_path / "hepmass" / "1000_test.csv", [*names, "x"], test_table)
    train, val, test = _splits("hepmass", tmp_path, 21)
    signal = train_table[:, 0] == 1
    n = int(signal.sum())
    assert len(train) + len(val) == n and len(val) == int(0.1 * n)
    assert len(test) == int((test_table[:, 0] == 1).sum())
    both = np.vstack((train, val))
    expected = (train_smooth[signal] - train_smooth[signal].mean(0)) / train_smooth[signal].std(
        0, ddof=1
    )
    np.testing.assert_allclose(both, expected, atol=1e-5)
    np.testing.assert_allclose(test[:7], both[:7], atol=1e-6)  # the training table's statistics


def test_miniboone_splits_in_file_order_and_normalises_on_train_and_val(tmp_path):
    n = 250
    data = np.random.default_rng(3).normal(size=(n, 43)) * 4.0 + 2.0
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", data)
    train, val, test = _splits("miniboone", tmp_path, 43)
    sizes = _reference_sizes(n)
    assert (len(train), len(val), len(test)) == sizes
    head = data[: sizes[0] + sizes[1]]
    mu, s = head.mean(0), head.std(0)
    np.testing.assert_allclose(test, (data[-sizes[2] :] - mu) / s, atol=1e-5)
    np.testing.assert_allclose(np.vstack((train, val)), (head - mu) / s, atol=1e-5)


def test_bsds300_reads_the_stored_splits(tmp_path):
    rng = np.random.default_rng(4)
    stored = {
        k: rng.normal(size=(m, 63)) for k, m in (("train", 30), ("validation", 8), ("test", 9))
    }
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as handle:
        for key, value in stored.items():
            handle[key] = value
    train, val, test = _splits("bsds300", tmp_path, 63)
    for got, key in ((train, "train"), (val, "validation"), (test, "test")):
        np.testing.assert_allclose(got, stored[key], atol=1e-6)


def test_missing_and_malformed_files_are_one_sentence(tmp_path):
    with pytest.raises(GenflowError, match=r"reads .*miniboone/data.npy.*does not exist"):
        load_dataset(_cfg("miniboone", tmp_path, 43))
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.zeros((50, 40)) + np.arange(50)[:, None])
    with pytest.raises(GenflowError, match=r"has shape \(\d+, 40\), but the benchmark has 43"):
        load_dataset(_cfg("miniboone", tmp_path, 43))
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((50, 5)))
    with pytest.raises(GenflowError, match="has 5 columns; the release has 8"):
        load_dataset(_cfg("power", tmp_path, 6))


def test_train_and_eval_on_a_benchmark_from_the_command_line(workdir):
    """genflow train model=maf dataset=miniboone dataset.root=... with nothing else: eval's NLL
    is load_run's log_prob of the preprocessed test split."""
    from conftest import RUN_TINY, last_json_line, run_dirs, run_genflow

    import genflow

    (workdir / "miniboone").mkdir()
    np.save(workdir / "miniboone" / "data.npy", np.random.default_rng(5).normal(size=(400, 43)))
    tiny = ["model.hidden_features=16", "model.num_layers=2", *RUN_TINY]
    run_genflow(
        ["train", "model=maf", "dataset=miniboone", f"dataset.root={workdir}", *tiny], workdir
    )
    (run,) = run_dirs(workdir)
    summary = last_json_line(run_genflow(["eval", f"run={run}"], workdir).stdout)
    loaded = genflow.load_run(run)
    test = loaded.data("test")
    assert summary["num_examples"] == len(test) == 40  # int(0.1 * 400)
    assert abs(-loaded.log_prob(test).mean().item() - summary["nll"]) < 1e-4
