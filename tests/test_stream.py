"""Streamed image datasets (dataset=image_stream): the same batches as the in-memory path,
exact mid-epoch resume with any number of workers, disjoint DDP shares, bad records."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODEL_TINY, RUN_TINY, read_records, run_dirs, run_genflow
from omegaconf import OmegaConf
from PIL import Image

from genflow.data.datasets import load_dataset
from genflow.data.stream import StreamBatches, rank_order
from genflow.errors import GenflowError

SIZE = 8


def image(i: int, size: int = SIZE) -> np.ndarray:
    """Image i carries its number in its first two pixels' red values (so a batch says
    which records it holds); the rest is noise of a fixed seed."""
    a = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    a[0, 0, 0], a[0, 1, 0] = i % 256, i // 256
    return a


def png(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder(root: Path, n: int, classes: int = 2) -> Path:
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png(image(i)))
    return root


def write_shards(root: Path, n: int, per_shard: int, classes: int = 2) -> Path:
    """The same images in WebDataset shards, in the folder's order (class by class), each
    with its label in <key>.cls."""
    root.mkdir(parents=True)
    order = sorted(range(n), key=lambda i: (i % classes, i))
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"part-{s // per_shard:04d}.tar", "w") as tar:
            for i in order[s : s + per_shard]:
                for suffix, data in ((".png", png(image(i))), (".cls", str(i % classes).encode())):
                    info = tarfile.TarInfo(f"{i:05d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def stream_cfg(path: Path, **extra):
    cfg = {
        "name": "image_stream",
        "root": str(path.parent),
        "path": str(path),
        "format": "auto",
        "train": None,
        "val": None,
        "test": None,
        "image_size": SIZE,
        "channels": 3,
        "resize": False,
        "n_bits": 8,
        "levels": 256,
        "shape": [3, SIZE, SIZE],
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "split_seed": 0,
        "num_workers": 0,
        "strict": False,
    }
    return OmegaConf.create({**cfg, **extra})


def numbers(x: torch.Tensor) -> list[int]:
    """The image numbers a batch holds."""
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def test_folder_and_shards_list_the_same_records_with_labels(tmp_path):
    folder = load_dataset(stream_cfg(write_folder(tmp_path / "f", 30)))
    shards = load_dataset(stream_cfg(write_shards(tmp_path / "t", 30, per_shard=7)))
    for split in ("train", "val", "test"):
        a, b = getattr(folder, split), getattr(shards, split)
        assert torch.equal(a[: len(a)], b[: len(b)])
        assert torch.equal(folder.labels[split], shards.labels[split])
        assert folder.labels[split].tolist() == [n % 2 for n in numbers(a[: len(a)])]
    assert len(folder.train) + len(folder.val) + len(folder.test) == 30


def test_streamed_and_in_memory_folders_train_to_the_same_weights(tmp_path):
    """Folder (streamed, 2 workers), tar shards (streamed) and dataset=image_folder (in
    memory) on the same images: the same splits, batches and noise, so bit-identical
    weights and test figures."""
    write_folder(tmp_path / "images", 60)
    write_shards(tmp_path / "shards", 60, per_shard=16)
    common = [*MODEL_TINY["realnvp"], *RUN_TINY, "trainer.max_steps=6", "trainer.eval_every=3"]
    common += ["trainer.batch_size=8", "trainer.sample_every=0", f"dataset.image_size={SIZE}"]
    runs = {
        "memory": ["dataset=image_folder", f"dataset.path={tmp_path / 'images'}"],
        "folder": ["dataset=image_stream", f"dataset.path={tmp_path / 'images'}"],
        "tar": ["dataset=image_stream", f"dataset.path={tmp_path / 'shards'}"],
    }
    weights, tests = {}, {}
    for name, args in runs.items():
        (tmp_path / name).mkdir()
        run_genflow(["train", *common, *args], tmp_path / name)
        (run,) = run_dirs(tmp_path / name)
        weights[name] = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        tests[name] = json.loads((run / "eval.json").read_text())
    for name in ("folder", "tar"):
        for key, value in weights["memory"].items():
            assert torch.equal(weights[name][key], value), (name, key)
        assert tests[name]["bpd"] == tests["memory"]["bpd"]
        assert tests[name]["worst_index"] == tests["memory"]["worst_index"]


def test_a_streamed_run_resumed_mid_epoch_with_other_workers_is_bit_exact(tmp_path):
    """10 steps of 6 per epoch straight (1 worker) against 4 steps (2 workers) resumed to
    10 with the loader in this process (0 workers): the same weights, bit for bit."""
    write_folder(tmp_path / "images", 60)
    common = [*MODEL_TINY["realnvp"], *RUN_TINY, "trainer.batch_size=8", "trainer.eval_every=2"]
    common += ["trainer.ckpt_every=2", "trainer.sample_every=0", "optimizer/scheduler=constant"]
    common += ["dataset=image_stream", f"dataset.path={tmp_path / 'images'}", "dataset.flip=true"]
    common += [f"dataset.image_size={SIZE}", "dataset.resize=false"]
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    run_genflow(
        ["train", *common, "trainer.max_steps=10", "dataset.num_workers=1"], tmp_path / "straight"
    )
    run_genflow(
        ["train", *common, "trainer.max_steps=4", "dataset.num_workers=2"], tmp_path / "resumed"
    )
    (first,) = run_dirs(tmp_path / "resumed")
    run_genflow(
        ["train", *common, "trainer.max_steps=10", "dataset.num_workers=0", f"resume={first}"],
        tmp_path / "resumed",
    )
    (straight,) = run_dirs(tmp_path / "straight")
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (straight, first))
    assert a["trainer"]["step"] == b["trainer"]["step"] == 10
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key


def test_ranks_read_disjoint_shares_that_cover_each_epoch_once(tmp_path):
    """Two ranks accumulating two micro-batches each, along the trainer's order (rank r
    reads micro-batches (s * 2 + r) * 2 + i, each loader running ahead along its own):
    over an epoch they read every training example of a full batch once."""
    splits = load_dataset(stream_cfg(write_folder(tmp_path / "f", 45), val_fraction=0.05))
    train = splits.train
    n, world, batch = 2, 2, 4
    per_epoch = len(train) // batch  # 9 micro-batches of 4 from 41 examples
    seen = {}
    for rank in range(world):
        batches = StreamBatches(train, batch, seed=3, next_index=rank_order(n, world))
        seen[rank] = []
        for step in range(per_epoch // (n * world) + 1):
            for i in range(n):
                j = (step * world + rank) * n + i
                if j < per_epoch:
                    seen[rank] += numbers(batches.labeled(j)[0])
        assert batches.restarts == 1  # its loader read its own share only, in order
    both = seen[0] + seen[1]
    assert not set(seen[0]) & set(seen[1])
    # no example twice in the epoch, every full batch read, all of them training examples
    assert len(both) == len(set(both)) == per_epoch * batch
    assert set(both) <= set(numbers(train[: len(train)]))


def test_a_corrupt_record_is_skipped_and_counted_or_stops_a_strict_run(tmp_path):
    folder = write_folder(tmp_path / "images", 40)
    split = {"val_fraction": 0.01, "test_fraction": 0.01}  # 38 training images: 2 batches of 19
    bad = Path(load_dataset(stream_cfg(folder, **split)).train.records.name(5))
    bad.write_bytes(b"not a png at all")
    common = [*MODEL_TINY["realnvp"], *RUN_TINY, "trainer.max_steps=8", "trainer.eval_every=4"]
    common += ["trainer.batch_size=19", "trainer.sample_every=0", "trainer.log_every=1"]
    common += ["dataset=image_stream", f"dataset.path={folder}", f"dataset.image_size={SIZE}"]
    common += [f"dataset.{k}={v}" for k, v in split.items()]
    (tmp_path / "lenient").mkdir()
    out = run_genflow(["train", *common], tmp_path / "lenient")
    said = out.stdout + out.stderr
    assert "skipped an unreadable record" in said and bad.name in said
    (run,) = run_dirs(tmp_path / "lenient")
    counts = [r.get("skipped_records", 0) for r in read_records(run) if r["split"] == "train"]
    assert len(counts) == 8 and counts[-1] == 4  # once in each of the 4 epochs
    assert counts == sorted(counts) and counts[1] == 1

    (tmp_path / "strict").mkdir()
    out = run_genflow(["train", *common, "dataset.strict=true"], tmp_path / "strict", check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in said
    assert bad.name in said and "dataset.strict=true stops here" in said


def test_bad_sets_are_one_sentence_naming_the_file(tmp_path):
    folder = write_folder(tmp_path / "images", 12)
    # a truncated shard
    write_shards(tmp_path / "shards", 12, per_shard=6)
    shard = tmp_path / "shards" / "part-0001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(GenflowError, match="part-0001.tar cannot be read"):
        load_dataset(stream_cfg(tmp_path / "shards"))
    # a set of another size than dataset.image_size (no resizing)
    with pytest.raises(GenflowError, match=r"\d{5}\.png, cannot be used: 8x8, not 16x16"):
        load_dataset(stream_cfg(folder, image_size=16, shape=[3, 16, 16]))
    # greyscale images where the set is colour
    grey = tmp_path / "grey" / "a"
    grey.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(image(i)[:, :, 0]).save(grey / f"{i}.png")
    with pytest.raises(
        GenflowError, match=r"\d\.png, cannot be used: a greyscale \(L\) image in a colour"
    ):
        load_dataset(stream_cfg(tmp_path / "grey"))
    # a split folder that is not there
    with pytest.raises(GenflowError, match="the test split of dataset 'image_stream' is missing"):
        load_dataset(stream_cfg(tmp_path, train="images", test="valid"))
    # images beside class folders
    (folder / "loose.png").write_bytes(png(image(0)))
    with pytest.raises(GenflowError, match="loose.png"):
        load_dataset(stream_cfg(folder))


def test_named_split_folders_and_a_held_out_validation_split(tmp_path):
    write_folder(tmp_path / "train", 50, classes=1)
    write_folder(tmp_path / "valid", 10, classes=1)
    splits = load_dataset(stream_cfg(tmp_path, train="train", test="valid", val_fraction=0.2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
    assert sorted(numbers(splits.train[:40]) + numbers(splits.val[:10])) == list(range(50))
    assert numbers(splits.test[:10]) == list(range(10))


def test_a_resized_stream_crops_the_centre_of_the_short_side(tmp_path):
    wide = tmp_path / "wide" / "a"
    wide.mkdir(parents=True)
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[:, 4:28] = 200  # covers the centre square (8:24) of the 32-wide image, with a margin
    for i in range(3):
        Image.fromarray(a).save(wide / f"{i}.png")
    splits = load_dataset(stream_cfg(tmp_path / "wide", resize=True))
    x = splits.train[:1]
    assert x.shape == (1, 3, SIZE, SIZE) and int(x.min()) == 200


@pytest.mark.slow
def test_ddp_ranks_on_a_stream_match_one_process_accumulating(tmp_path):
    """Two CPU ranks, each with its own loader over its share, end with the weights of one
    process accumulating both micro-batches of every step."""
    from test_ddp import assert_same_weights

    write_folder(tmp_path / "images", 60)
    common = [*MODEL_TINY["realnvp"], *RUN_TINY, "trainer.max_steps=6", "trainer.eval_every=3"]
    common += ["trainer.batch_size=8", "trainer.sample_every=0"]
    common += ["dataset=image_stream", f"dataset.path={tmp_path / 'images'}"]
    common += [f"dataset.image_size={SIZE}", "dataset.num_workers=1"]
    for name in ("one", "ddp"):
        (tmp_path / name).mkdir()
    run_genflow(["train", *common, "trainer.accumulate_steps=2"], tmp_path / "one")
    run_genflow(["train", *common, "device=ddp", "device.nproc_per_node=2"], tmp_path / "ddp")
    (one,), (ddp,) = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "ddp")
    load = lambda r: torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"]  # noqa: E731
    assert_same_weights(load(one), load(ddp))


def test_a_saved_hugging_face_dataset_streams_the_same_records_as_its_folder(tmp_path):
    """A DatasetDict saved with save_to_disk (memory-mapped Arrow, PNG bytes in its image
    column): its own train and test splits, validation held out of train, labels from its
    label column; the same images as the folder they were made from."""
    datasets = pytest.importorskip("datasets")
    n = 24
    table = {
        "image": [Image.fromarray(image(i)) for i in range(n)],
        "label": [i % 3 for i in range(n)],
    }
    whole = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    saved = tmp_path / "hf"
    datasets.DatasetDict(
        {"train": whole.select(range(20)), "test": whole.select(range(20, n))}
    ).save_to_disk(str(saved))
    splits = load_dataset(stream_cfg(saved, val_fraction=0.25))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
    seen = numbers(splits.train[:15]) + numbers(splits.val[:5])
    assert sorted(seen) == list(range(20)) and numbers(splits.test[:4]) == [20, 21, 22, 23]
    assert torch.equal(splits.test[:4][0], torch.from_numpy(image(20)).permute(2, 0, 1))
    assert splits.labels["train"].tolist() == [k % 3 for k in numbers(splits.train[:15])]
    # read by worker processes, batch by batch, as training reads it
    batches = StreamBatches(splits.train.to("cpu"), 5, seed=0)
    batches.split.num_workers = 2
    assert sorted(sum((numbers(batches.labeled(j)[0]) for j in range(3)), [])) == sorted(seen[:15])
    with pytest.raises(GenflowError, match="holds the splits train, test, not 'valid'"):
        load_dataset(stream_cfg(saved, test="valid"))


def test_a_partition_file_splits_the_folder_and_a_crop_box_is_cut_first(tmp_path):
    """CelebA's layout: one flat folder and list_eval_partition.txt naming each file's split
    (0 train, 1 validation, 2 test); dataset.crop cuts [top, left, height, width] out before
    the resize."""
    folder = tmp_path / "celeba" / "img"
    folder.mkdir(parents=True)
    a = np.zeros((20, 12, 3), dtype=np.uint8)
    a[5:13, 2:10] = 90  # the 8x8 box the crop cuts out
    lines = []
    for i in range(9):
        a[0, 0, 0] = i
        Image.fromarray(a).save(folder / f"{i:06d}.png")
        lines.append(f"{i:06d}.png {i % 3}")
    (tmp_path / "celeba" / "partition.txt").write_text("\n".join(lines) + "\n")
    cfg = stream_cfg(
        folder, root=str(tmp_path), partition="celeba/partition.txt", crop=[5, 2, 8, 8], resize=True
    )
    splits = load_dataset(cfg)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [3, 3, 3]
    for k, split in enumerate((splits.train, splits.val, splits.test)):
        x = split[:3]
        assert x.shape == (3, 3, SIZE, SIZE) and bool((x == 90).all())
        assert sorted(Path(split.records.name(i)).name for i in range(3)) == [
            f"{i:06d}.png" for i in range(9) if i % 3 == k
        ]
    (tmp_path / "celeba" / "partition.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(GenflowError, match=r"000008\.png \(and 0 more images\) is not in"):
        load_dataset(cfg)
    with pytest.raises(GenflowError, match="too small for dataset.crop"):
        load_dataset(stream_cfg(folder, crop=[15, 2, 8, 8], resize=True, partition=None))
