"""The streaming data path (dataset=image_stream): what it delivers, what it holds, how soon
it starts.

    python benchmarks/data.py                       # both parts
    python benchmarks/data.py --part throughput     # loader images/s against Glow's appetite
    python benchmarks/data.py --part memory --memory-limit-gb 2 --images 24000

throughput: a generated set of 64x64 PNG images, as a folder and as WebDataset tar shards;
the images/s the loader delivers with 0, 1, 2 (``--workers``) worker processes (the decode,
the collation and the move to the device, as the trainer asks for micro-batches), against
the images/s the default Glow at 64x64 (``genflow train model=glow dataset=image_stream
dataset.image_size=64``, its batch) trains on this machine. It prints how many workers it
takes to feed the model here (and, with ``--device cuda``, on the GPU).

memory: a generated set of 256x256 JPEG images (CelebA-HQ's size) whose decoded uint8
pixels are several times the memory the training process tree is allowed (a cgroup memory
limit where this machine lets us make one, else RLIMIT_DATA on each process). A tiny Glow
trains on it streamed (``dataset=image_stream``) and held in memory (``dataset=image_folder``)
under that limit: the peak memory, the seconds to the first training step and how each run
ended. The same on a set a quarter of the size shows whether the streamed peak grows with
the data (it should not). Under a cgroup the peak counts the page cache of the files read,
which the kernel gives back under the limit; the process tree's own memory (anonymous
pages, polled every 50 ms) is shown beside it. The generated sets are kept in ``--scratch`` for reruns.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import hardware  # noqa: E402


def make_images(folder: Path, n: int, size: int, fmt: str, shards: int = 0) -> Path:
    """``n`` images of ``size`` (smooth colour fields with noise, so JPEG and PNG compress
    them as they do photographs) in two class folders, and as ``shards`` tar shards."""
    import numpy as np
    from PIL import Image

    done = folder / f".done-{n}-{size}-{fmt}-{shards}"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tars = []
    if shards:
        (folder.parent / f"{folder.name}-shards").mkdir(exist_ok=True)
        shard_folder = folder.parent / f"{folder.name}-shards"
        tars = [tarfile.open(shard_folder / f"part-{s:05d}.tar", "w") for s in range(shards)]
    for i in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy + c + k) for k in range(3)], -1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, quality=90)
        data = buffer.getvalue()
        name = f"{i:07d}.{fmt.lower().replace('jpeg', 'jpg')}"
        sub = folder / f"class{i % 2}"
        sub.mkdir(exist_ok=True)
        (sub / name).write_bytes(data)
        if tars:
            tar = tars[i * len(tars) // n]
            for member, payload in ((name, data), (f"{i:07d}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    for tar in tars:
        tar.close()
    done.touch()
    return folder


def compose(overrides: list[str]):
    """The config ``genflow train <overrides>`` composes."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from genflow.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides)


def loader_rate(
    path: Path, size: int, workers: int, batch: int, device: str, seconds: float
) -> float:
    """Images/s the training loader delivers on ``device`` (after its first batch)."""
    import torch

    from genflow.data.datasets import load_dataset
    from genflow.data.stream import StreamBatches

    dataset = compose(
        [
            "dataset=image_stream",
            f"dataset.path={path}",
            f"dataset.image_size={size}",
            "dataset.resize=false",
            f"dataset.num_workers={workers}",
            "dataset.val_fraction=0.01",
            "dataset.test_fraction=0.01",
        ]
    ).dataset
    splits = load_dataset(dataset)
    train = splits.train.to(device)
    batches = StreamBatches(train, batch, seed=0)
    batches.labeled(0)  # the workers start
    start, j = time.perf_counter(), 1
    while time.perf_counter() - start < seconds:
        x, _ = batches.labeled(j)
        j += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return (j - 1) * batch / (time.perf_counter() - start)


def glow_rate(path: Path, device: str, steps: int) -> tuple[float, int]:
    """Images/s the default Glow at 64x64 trains on (its configured batch), data in memory."""
    import torch

    from genflow.tasks.common import build_model

    cfg = compose(
        ["model=glow", "dataset=image_stream", f"dataset.path={path}", "dataset.image_size=64"]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    batch = int(cfg.trainer.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, 3, 64, 64), device=device, dtype=torch.uint8)
    model.initialize(x, None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).loss.backward()
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start), batch


def throughput(args) -> None:
    n = args.throughput_images
    folder = make_images(Path(args.scratch) / "png64", n, 64, "PNG", shards=8)
    shards = folder.parent / f"{folder.name}-shards"
    print(f"hardware: {hardware(args.device)}")
    print(f"{n} PNG images of 64x64 (a folder, and 8 tar shards); batch {args.batch}")
    consumed, glow_batch = glow_rate(folder, args.device, args.glow_steps)
    print(f"default Glow at 64x64 (batch {glow_batch}) trains on {consumed:.1f} images/s")
    rates = {}
    print("| source | workers | images/s | x Glow's need |")
    print("|---|---|---|---|")
    for source, path in (("folder", folder), ("tar", shards)):
        for workers in args.workers:
            rate = loader_rate(path, 64, workers, args.batch, args.device, args.seconds)
            rates[(source, workers)] = rate
            print(f"| {source} | {workers} | {rate:.0f} | {rate / consumed:.1f} |")
    # one worker's rate: measured with 1 worker, else the most workers' rate shared out
    most = max(args.workers)
    one = rates.get(("folder", 1)) or (rates[("folder", most)] / most if most else None)
    if one is None:  # only the training process decoded
        print("workers it takes to feed Glow here: run with --workers 1 or more to say")
        return
    need = max(1, math.ceil(consumed / one))
    print(
        f"workers it takes to feed Glow here: {need} (one worker decodes about {one:.0f} images/s)"
    )


def _cgroup(limit: int) -> Path | None:
    base = Path("/sys/fs/cgroup/memory")
    group = base / f"genflow-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        swap = group / "memory.memsw.limit_in_bytes"  # memory and swap, where swap counts
        if swap.exists():
            swap.write_text(str(limit))
        return group
    except OSError:
        return None


def run_limited(args_list: list[str], cwd: Path, limit: int, timeout: float) -> dict:
    """A genflow train in a memory-limited process tree: how it ended, its peak memory,
    and the seconds from its start to its first training step."""
    cwd.mkdir(parents=True, exist_ok=True)
    group = _cgroup(limit)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")

    def enter():
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genflow", "train", *args_list],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=enter,
    )
    first, anon = None, 0
    while proc.poll() is None and time.perf_counter() - start < timeout:
        if first is None:
            for metrics in cwd.glob("outputs/**/metrics.jsonl"):
                if '"train"' in metrics.read_text():
                    first = time.perf_counter() - start
        if group is not None:  # the tree's own memory, without the page cache it reads
            stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
            anon = max(anon, int(stat.get("total_rss", 0)))
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0]
    seconds = time.perf_counter() - start
    if group is not None:
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        how = "cgroup"
        group.rmdir()
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        how = "RLIMIT_DATA per process; peak RSS of the largest process"
    ended = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
    if proc.returncode in (-9, 137):
        ended = "killed by the memory limit"
    elif proc.returncode != 0:
        lines = [line for line in out.splitlines() if line.strip()]
        ended += f": {lines[-1][:160] if lines else ''}"
    return {
        "ended": ended,
        "peak": peak,
        "anon": anon or None,
        "first_step": first,
        "seconds": seconds,
        "how": how,
    }


def memory(args) -> None:
    limit = int(args.memory_limit_gb * 2**30)
    size = 256
    print(f"hardware: {hardware('cpu')}")
    tiny = ["model=glow", "model.hidden_channels=8", "model.steps_per_level=1"]
    tiny += ["trainer.max_steps=10", "trainer.batch_size=4", "trainer.eval_every=1000000"]
    tiny += ["trainer.sample_every=0", "trainer.log_every=1", "logger=none", "device=cpu"]
    tiny += [f"dataset.image_size={size}", "trainer.eval_batch_size=4"]
    tiny += ["dataset.val_fraction=0.0005", "dataset.test_fraction=0.0005"]
    print(
        "| images | decoded size | dataset | limit | peak memory (of which the process "
        "tree's own) | first step | ended |\n|---|---|---|---|---|---|---|"
    )
    for n in (args.images // 4, args.images):
        folder = make_images(Path(args.scratch) / f"jpg256-{n}", n, size, "JPEG")
        decoded = n * 3 * size * size / 2**30
        for dataset in ("image_stream", "image_folder"):
            extra = [f"dataset={dataset}", f"dataset.path={folder}"]
            if dataset == "image_stream":
                extra += ["dataset.num_workers=2"]
            cwd = Path(args.scratch) / f"run-{dataset}-{n}-{time.time_ns()}"
            r = run_limited([*tiny, *extra], cwd, limit, args.timeout)
            first = "never" if r["first_step"] is None else f"{r['first_step']:.1f} s"
            own = "" if r["anon"] is None else f" ({r['anon'] / 2**30:.2f} GiB)"
            print(
                f"| {n} | {decoded:.2f} GiB | {dataset} | {args.memory_limit_gb:g} GiB "
                f"({r['how']}) | {r['peak'] / 2**30:.2f} GiB{own} | {first} | {r['ended']} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["throughput", "memory", "both"], default="both")
    parser.add_argument("--scratch", default="/tmp/genflow-data-bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--throughput-images", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--glow-steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument("--memory-limit-gb", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.part in ("throughput", "both"):
        throughput(args)
    if args.part in ("memory", "both"):
        memory(args)
    print(json.dumps({"argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
