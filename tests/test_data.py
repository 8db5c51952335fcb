"""Datasets, splits and on-device batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MNIST_ROOT
from omegaconf import OmegaConf

from genflow.data import EpochBatches, load_dataset
from genflow.data.datasets import reduce_bits
from genflow.data.toys import TOYS
from genflow.errors import GenflowError


def _cfg(**kw):
    return OmegaConf.create(kw)


def _mnist_cfg(root=MNIST_ROOT, **overrides):
    """The mnist dataset config as conf/dataset/mnist.yaml composes it, at ``root``."""
    base = dict(
        name="mnist", root=str(root), download=False, val_size=10000, shape=[1, 28, 28], n_bits=8
    )
    return _cfg(**{**base, **overrides})


def test_digits_split_follows_file_order():
    from sklearn.datasets import load_digits

    splits = load_dataset(_cfg(name="digits", shape=[1, 8, 8], n_train=1000, n_val=350))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 350, 447)
    raw = torch.from_numpy(load_digits().data.astype(np.uint8)).view(-1, 1, 8, 8)
    assert torch.equal(splits.train, raw[:1000])
    assert torch.equal(splits.val, raw[1000:1350])
    assert torch.equal(splits.test, raw[1350:])
    assert splits.train.dtype == torch.uint8 and int(splits.train.max()) == 16
    # the class labels travel with their images
    target = torch.from_numpy(load_digits().target.astype(np.int64))
    assert torch.equal(splits.labels_of("val"), target[1000:1350])
    assert torch.equal(splits.labels_of("test"), target[1350:])
    assert (
        len(splits.labels_of("train")) == 1000 and splits.to("cpu").labels_of("train") is not None
    )


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_are_reproducible_2d_points(name):
    cfg = _cfg(name=name, shape=[2], n_train=500, n_val=50, n_test=50, data_seed=7)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train.shape == (500, 2) and a.train.dtype == torch.float32
    assert torch.equal(a.train, b.train) and not torch.equal(a.train[:50], a.val)
    assert torch.isfinite(a.train).all() and a.train.std() > 0.1


def test_reduce_bits_keeps_top_bits():
    x = torch.tensor([0, 7, 8, 255], dtype=torch.uint8)
    assert reduce_bits(x, 5).tolist() == [0, 0, 1, 31]
    with pytest.raises(GenflowError, match="n_bits"):
        reduce_bits(x, 9)


def test_missing_mnist_says_where_it_looked(tmp_path):
    cfg = _mnist_cfg(tmp_path)
    with pytest.raises(GenflowError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert str(tmp_path) in message and "dataset.root" in message and "download=true" in message


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(GenflowError, match="valid datasets: .*digits"):
        load_dataset(_cfg(name="mnits", shape=[1]))


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_real_mnist_holds_out_last_10k_of_train():
    cfg = _mnist_cfg()
    splits = load_dataset(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50000, 10000, 10000)
    assert splits.train.dtype == torch.uint8 and splits.train.shape[1:] == (1, 28, 28)
    labels = {name: splits.labels_of(name) for name in ("train", "val", "test")}
    assert [len(v) for v in labels.values()] == [50000, 10000, 10000]
    assert labels["test"][:4].tolist() == [7, 2, 1, 0]  # MNIST's first test digits
    assert torch.equal(
        load_dataset(_mnist_cfg(n_bits=4, levels=16)).labels_of("val"), labels["val"]
    )


def test_epoch_batches_are_a_pure_function_of_step():
    data = torch.arange(10).view(10, 1)
    batches = EpochBatches(data, batch_size=3, seed=5)
    assert batches.steps_per_epoch == 3
    first_epoch = torch.cat([batches(s) for s in range(3)]).flatten().tolist()
    assert len(set(first_epoch)) == 9  # a permutation, last partial batch dropped
    fresh = EpochBatches(data, batch_size=3, seed=5)
    assert torch.equal(fresh(7), batches(7)) and torch.equal(fresh(1), batches(1))
    assert not torch.equal(batches(0), batches(3))  # a new permutation each epoch
    # with labels, each batch comes with its own examples' labels (a class-conditional model)
    labeled = EpochBatches(data, batch_size=3, seed=5, labels=100 + data.flatten())
    for step in (0, 4, 7):
        x, y = labeled.labeled(step)
        assert torch.equal(x, batches(step)) and torch.equal(y, 100 + x.flatten())
    assert batches.labeled(2)[1] is None


def test_class_labels_are_checked_against_model_num_classes():
    from omegaconf import OmegaConf

    from genflow.data.datasets import DataSplits, check_labels

    cfg = OmegaConf.create({"name": "toy"})
    x = torch.zeros(4, 1)
    with pytest.raises(GenflowError, match="dataset 'toy' has no class labels"):
        check_labels(DataSplits(x, x, x), cfg, 3)
    labels = {
        "train": torch.tensor([0, 1, 2, 3]),
        "val": torch.tensor([0]),
        "test": torch.tensor([1]),
    }
    with pytest.raises(GenflowError, match=r"labels in \[0, 3\] .* set model.num_classes=4"):
        check_labels(DataSplits(x, x, x, labels=labels), cfg, 3)
    check_labels(DataSplits(x, x, x, labels=labels), cfg, 4)


def test_epoch_batches_reject_bad_sizes():
    with pytest.raises(GenflowError, match="batch_size"):
        EpochBatches(torch.zeros(4, 1), batch_size=0, seed=0)
    with pytest.raises(GenflowError, match="larger than the training split"):
        EpochBatches(torch.zeros(4, 1), batch_size=5, seed=0)


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_binarized_mnist_static_and_dynamic():
    binarized = dict(name="binarized_mnist", n_bits=None, binarize_seed=0)
    static = load_dataset(_mnist_cfg(**binarized, binarize="static"))
    again = load_dataset(_mnist_cfg(**binarized, binarize="static"))
    assert set(static.train.unique().tolist()) == {0, 1} and torch.equal(static.train, again.train)
    assert static.train_transform is None
    intensities = load_dataset(_mnist_cfg())
    expected = intensities.train.float().mean() / 255
    assert abs(static.train.float().mean() - expected) < 1e-3  # a Bernoulli draw of the intensities

    dynamic = load_dataset(_mnist_cfg(**binarized, binarize="dynamic"))
    assert torch.equal(dynamic.train, intensities.train)  # stored as intensities ...
    batches = EpochBatches(dynamic.train, batch_size=64, seed=0, transform=dynamic.train_transform)
    first, second = batches(0), batches(0)  # ... and drawn afresh each time a batch is drawn
    assert set(first.unique().tolist()) <= {0, 1} and not torch.equal(first, second)
    assert torch.equal(dynamic.val, static.val) and torch.equal(dynamic.test, static.test)
    scored = dynamic.scored("train")  # evaluation scores one fixed draw of the training split
    assert set(scored.unique().tolist()) == {0, 1} and torch.equal(scored, dynamic.scored("train"))
    assert abs(scored.float().mean() - expected) < 1e-3
    assert dynamic.scored("val") is dynamic.val and static.scored("train") is static.train
    for splits in (static, dynamic):
        assert torch.equal(splits.labels_of("test"), intensities.labels_of("test"))
    with pytest.raises(GenflowError, match="binarize"):
        load_dataset(_mnist_cfg(**binarized, binarize="sometimes"))


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_n_bits_is_refused_where_levels_are_fixed(name):
    cfg = _cfg(name=name, shape=[1, 8, 8], levels=17, n_bits=4, data_seed=0)
    with pytest.raises(GenflowError, match="n_bits applies to 8-bit datasets"):
        load_dataset(cfg)


def test_data_outside_levels_is_refused():
    digits = dict(name="digits", shape=[1, 8, 8], n_bits=None)
    assert load_dataset(_cfg(**digits, levels=17)).train.max() == 16
    with pytest.raises(GenflowError, match=r"values in \[0, 16\] but dataset.levels=16"):
        load_dataset(_cfg(**digits, levels=16))


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_mnist_levels_follow_n_bits():
    assert load_dataset(_mnist_cfg(n_bits=5, levels=32)).test.max() == 31
    with pytest.raises(GenflowError, match="dataset.levels=16"):
        load_dataset(_mnist_cfg(n_bits=8, levels=16))


def test_image_folder_errors_name_the_folder_or_the_file(tmp_path):
    """An empty folder and a file that is not an image each get one sentence."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"name": "image_folder", "root": str(tmp_path), "path": "empty", "image_size": 8}
        | {"channels": 1, "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenflowError, match="holds no images to read .* one sub-folder of images"):
        load_dataset_splits(cfg)
    (tmp_path / "junk" / "cats").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "junk" / "cats" / f"{i}.png").write_text("not a picture")
    cfg.path = "junk"
    with pytest.raises(GenflowError, match=r"cats/0.png is not a readable image"):
        load_dataset_splits(cfg)


def load_dataset_splits(cfg):
    from genflow.data.datasets import LOADERS

    return LOADERS["image_folder"](cfg)
