"""genflow on a CUDA GPU: every model x precision x compile (x channels_last), exact resume,
DDP over nccl, and eval / sample, measured and printed as tables with the hardware line.

    python benchmarks/gpu.py                                   # every section on cuda:0
    python benchmarks/gpu.py --sections matrix --models glow realnvp --steps 300
    python benchmarks/gpu.py --sections resume ddp eval        # the CLI checks only
    python benchmarks/gpu.py --device cpu --quick              # the same code paths on the CPU

Without a CUDA GPU (and without ``--device cpu``) it prints one line and exits 0.

matrix: each (model, shape, precision, mode, layout) runs in a fresh process on synthetic
integer images of MNIST's (1, 28, 28) and CIFAR-10's (3, 32, 32) shape, with the model's
default config for that dataset (``genflow train model=X dataset=Y``). Before training, the
first batch's training loss (eval mode, so no dropout; the same noise draws on both sides,
see ``same_noise``) under that precision and mode is compared with the same model's in
float64 on the CPU ("d loss" is the relative difference; the tolerances are in TOLERANCE). Then ``--warmup`` untimed steps (where torch.compile
compiles) and ``--steps`` timed ones: forward in autocast, backward (a GradScaler for fp16),
Adam. "syncs" counts host synchronisations in one step's forward and backward
(torch.cuda.set_sync_debug_mode); peak memory is torch.cuda.max_memory_allocated.

resume: ``genflow train`` on MNIST with trainer.deterministic=true, once uninterrupted and
once killed with SIGKILL partway and resumed with resume=auto; the final parameters are
compared (bit-identical, or the largest difference). ddp: ``device=ddp`` with one process per
GPU (nccl). eval: ``genflow eval`` and ``genflow sample`` of the resumed run, and of a
PixelCNN (its cached sampler). The CLI sections read MNIST from GENFLOW_DATA.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from flows import data_env, run_measurement  # noqa: E402
from throughput import compose, sync  # noqa: E402

MODELS = [
    "realnvp",
    "nice",
    "maf",
    "glow",
    "pixelcnn",
    "gated_pixelcnn",
    "pixelcnnpp",
    "pixelrnn",
    "wavenet",
    "vae",
]
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
# convolutional image models, for which channels_last is worth a row
IMAGE_MODELS = {"realnvp", "glow", "pixelcnn", "gated_pixelcnn", "pixelcnnpp", "pixelrnn", "vae"}
# relative difference of the first batch's loss from the CPU float64 figure
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}
# a compiled graph draws its own noise (the torch function mode does not reach into it), so a
# compiled row's first loss differs from the reference by that noise as well
COMPILED_TOLERANCE = 5e-3
SECTIONS = ["matrix", "resume", "ddp", "eval"]


# -- matrix -----------------------------------------------------------------------------------
def same_noise():
    """A torch function mode under which rand/randn (and their _like forms) draw from the CPU
    generator in float64 and are then cast and moved: the dequantization noise and the
    VAE's posterior draws are the same numbers on the CPU and on the device, so the first
    batch's loss can be compared exactly."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SameNoise(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in (torch.rand_like, torch.randn_like):
                like = args[0]
                draw = torch.rand if func is torch.rand_like else torch.randn
                dtype = kwargs.get("dtype") or like.dtype
                return draw(like.shape, dtype=torch.float64).to(like.device, dtype)
            if func in (torch.rand, torch.randn) and kwargs.get("generator") is None:
                device = kwargs.pop("device", None) or "cpu"
                dtype = kwargs.pop("dtype", None) or torch.get_default_dtype()
                return func(*args, dtype=torch.float64, **kwargs).to(device, dtype)
            return func(*args, **kwargs)

    return SameNoise()


def measure(model_name: str, dataset: str, precision: str, mode: str, layout: str, args) -> dict:
    """One row of the matrix, in this process."""
    import torch

    from genflow.engine.precision import autocast
    from genflow.tasks.common import build_model

    device = torch.device(args.device)
    cfg = compose(model_name, dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    levels, shape = int(cfg.dataset.levels), tuple(cfg.dataset.shape)
    batches = max(args.steps + args.warmup, 1)
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(
        0, levels, (min(batches, 8) * args.batch_size, *shape), generator=generator
    )
    data = data.to(torch.uint8).to(device)  # on the device before timing: no copies per step
    channels_last = layout == "nhwc"

    def batch(i: int):
        start = (i % (data.shape[0] // args.batch_size)) * args.batch_size
        x = data[start : start + args.batch_size]
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    model.initialize(batch(0).cpu())
    reference = copy.deepcopy(model).double().eval()
    with torch.no_grad(), same_noise():
        torch.manual_seed(1)
        ref_loss = float(reference(batch(0).cpu().contiguous()).loss)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if mode == "compile" else model
    model.eval()
    with torch.no_grad(), autocast(precision, device), same_noise():
        torch.manual_seed(1)
        loss0 = float(forward(batch(0)).loss)
    model.train()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(i: int) -> None:
        with autocast(precision, device):
            loss = forward(batch(i)).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.float()).backward()
        scaler.step(optimizer)
        scaler.update()

    for i in range(args.warmup):
        step(i)
    syncs = None
    if device.type == "cuda":
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            with autocast(precision, device):
                loss = forward(batch(0)).loss
            scaler.scale(loss.float()).backward()
            torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "loss0": loss0,
        "ref_loss0": ref_loss,
        "rel_diff": abs(loss0 - ref_loss) / max(abs(ref_loss), 1e-12),
        "steps_per_sec": args.steps / elapsed,
        "examples_per_sec": args.steps * args.batch_size / elapsed,
        "peak_mb": peak,
        "syncs": syncs,
    }


def matrix(args, env: dict) -> None:
    header = (
        f"{'model':<15}{'shape':<8}{'prec':<6}{'mode':<9}{'layout':<7}{'params(M)':>10}"
        f"{'loss@0':>10}{'d loss':>9}{'ok':>4}{'steps/s':>9}{'ex/s':>9}{'peak MB':>9}{'syncs':>6}"
    )
    print(header)
    print("-" * len(header), flush=True)
    rows = [
        (dataset, model, precision, mode, layout)
        for dataset, model, precision, mode in itertools.product(
            args.shapes, args.models, args.precisions, args.modes
        )
        for layout in (["nchw", "nhwc"] if model in IMAGE_MODELS else ["nchw"])
    ]
    for dataset, model, precision, mode, layout in rows:
        cmd = [sys.executable, __file__, "--one", model, dataset, precision, mode, layout]
        row = f"{model:<15}{dataset:<8}{precision:<6}{mode:<9}{layout:<7}"
        r = run_measurement([*cmd, *_passthrough(args)], env)
        if isinstance(r, str):
            print(f"{row}failed: {r}", flush=True)
            continue
        tolerance = TOLERANCE[precision]
        if mode == "compile":
            tolerance = max(tolerance, COMPILED_TOLERANCE)
        ok = "yes" if r["rel_diff"] <= tolerance else "NO"
        syncs = "-" if r["syncs"] is None else str(r["syncs"])
        print(
            f"{row}{r['params_m']:>10.2f}{r['loss0']:>10.4f}{r['rel_diff']:>9.1e}"
            f"{ok:>4}{r['steps_per_sec']:>9.2f}{r['examples_per_sec']:>9.0f}"
            f"{r['peak_mb']:>9.0f}{syncs:>6}",
            flush=True,
        )


def _passthrough(args) -> list[str]:
    return [
        *("--device", args.device),
        *("--steps", str(args.steps)),
        *("--warmup", str(args.warmup)),
        *("--batch-size", str(args.batch_size)),
    ]


# -- the CLI sections -------------------------------------------------------------------------
def run_cli(args_list: list[str], env: dict, cwd: Path, timeout: float = 1800) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "genflow", *args_list],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _run_dir(root: Path) -> Path:
    [ckpt] = list(root.glob("**/checkpoints/last.pt"))
    return ckpt.parent.parent


def _last_line(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return lines[-1][-160:] if lines else ""


def _steps_per_sec(run_dir: Path) -> float | None:
    rates = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "steps_per_sec" in record:
            rates.append(record["steps_per_sec"])
    return rates[-1] if rates else None


def _train_args(args, model: str, steps: int) -> list[str]:
    device = "cpu" if args.device == "cpu" else "cuda"
    return [
        "train",
        f"model={model}",
        "dataset=mnist",
        f"device={device}",
        "logger=none",
        f"trainer.max_steps={steps}",
        f"trainer.ckpt_every={max(steps // 6, 1)}",
        f"trainer.eval_every={steps}",
        "trainer.log_every=1",
        "trainer.sample_every=0",
        "trainer.progress_bar=false",
        "trainer.deterministic=true",
        *args.set,
    ]


def resume(args, env: dict, work: Path) -> list[tuple[str, str]]:
    import torch

    steps = args.resume_steps
    rows = []
    for model in args.resume_models:
        common = [*_train_args(args, model, steps), f"trainer.precision={args.resume_precision}"]
        whole, broken = work / f"resume-{model}-whole", work / f"resume-{model}-killed"
        rc, log = run_cli([*common, f"output_root={whole}"], env, work)
        if rc:
            rows.append((f"resume {model}", f"uninterrupted run failed: {_last_line(log)}"))
            continue
        proc = subprocess.Popen(
            [sys.executable, "-m", "genflow", *common, f"output_root={broken}"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kill_at, killed_at = steps // 2, None
        while proc.poll() is None:
            metrics = list(broken.glob("**/metrics.jsonl"))
            if metrics and metrics[0].read_text().count('"split": "train"') >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = kill_at
                break
            time.sleep(0.01)
        rc, log = run_cli([*common, f"output_root={broken}", "resume=auto"], env, work)
        if rc:
            rows.append((f"resume {model}", f"resumed run failed: {_last_line(log)}"))
            continue
        a = torch.load(_run_dir(whole) / "checkpoints" / "last.pt", weights_only=True)["model"]
        b = torch.load(_run_dir(broken) / "checkpoints" / "last.pt", weights_only=True)["model"]
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        where = f"killed after step >= {killed_at}" if killed_at else "finished before the kill"
        verdict = "bit-identical" if diff == 0 else f"max |difference| {diff:.3e}"
        warned = sorted(
            {line for line in log.splitlines() if "does not have a deterministic" in line}
        )
        note = f" ({len(warned)} ops without a deterministic implementation)" if warned else ""
        rows.append((f"resume {model} {args.resume_precision}", f"{where}: {verdict}{note}"))
        for line in warned:
            rows.append(("", line.strip()[:160]))
    return rows


def ddp(args, env: dict, work: Path) -> list[tuple[str, str]]:
    import torch

    gpus = torch.cuda.device_count() if args.device != "cpu" else 1
    accelerator = "cpu" if args.device == "cpu" else "cuda"
    root = work / "ddp"
    rc, log = run_cli(
        [
            *_train_args(args, "glow", args.short_steps),
            "device=ddp",
            f"device.nproc_per_node={gpus}",
            f"device.accelerator={accelerator}",
            f"output_root={root}",
        ],
        env,
        work,
    )
    if rc:
        return [(f"ddp x{gpus}", f"failed: {_last_line(log)}")]
    rate = _steps_per_sec(_run_dir(root))
    backend = "gloo" if accelerator == "cpu" else "nccl"
    speed = f", {rate:.2f} steps/s" if rate is not None else ""
    return [(f"ddp x{gpus} ({backend})", f"trained glow {args.short_steps} steps{speed}")]


def evaluate(args, env: dict, work: Path) -> list[tuple[str, str]]:
    device = "cpu" if args.device == "cpu" else "cuda"
    rows = []
    root = work / "eval-pixelcnn"
    rc, log = run_cli(
        [*_train_args(args, "pixelcnn", args.short_steps), f"output_root={root}"], env, work
    )
    runs = [(args.resume_models[0], work / f"resume-{args.resume_models[0]}-killed")]
    runs.append(("pixelcnn", root) if rc == 0 else ("pixelcnn", None))
    for model, where in runs:
        if where is None or not list(where.glob("**/checkpoints/last.pt")):
            rows.append((f"eval {model}", "no trained run to evaluate"))
            continue
        run_dir = _run_dir(where)
        start = time.perf_counter()
        rc, log = run_cli(["eval", f"run={run_dir}", f"device={device}"], env, work)
        took = time.perf_counter() - start
        if rc:
            rows.append((f"eval {model}", f"failed: {_last_line(log)}"))
        else:
            result = json.loads((run_dir / "eval.json").read_text())
            rows.append((f"eval {model}", f"test bpd {result['bpd']:.4f} in {took:.1f} s"))
        start = time.perf_counter()
        rc, log = run_cli(
            ["sample", f"run={run_dir}", f"device={device}", "sample.n=64"], env, work
        )
        took = time.perf_counter() - start
        rows.append(
            (f"sample {model}", f"failed: {_last_line(log)}" if rc else f"64 in {took:.1f} s")
        )
    return rows


# -- main -------------------------------------------------------------------------------------
def hardware_line(device: str) -> str:
    import torch

    if device == "cpu":
        from genflow.engine.device import describe_hardware

        return describe_hardware(torch.device("cpu"))
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return (
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, x{torch.cuda.device_count()}; "
        f"driver {driver}; torch {torch.__version__}, CUDA {torch.version.cuda}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per matrix row")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resume-models", nargs="+", default=["glow", "pixelcnn"])
    parser.add_argument("--resume-steps", type=int, default=300)
    parser.add_argument("--resume-precision", default="bf16")
    parser.add_argument("--short-steps", type=int, default=200, help="the DDP and PixelCNN runs")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for the CLI runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the code paths")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.one:
        print(json.dumps(measure(*args.one, args)))
        return
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu.py: no CUDA GPU here (torch {torch.__version__}); nothing measured")
        return
    if args.quick:
        args.steps, args.warmup, args.resume_steps, args.short_steps = 2, 1, 12, 4
        args.batch_size = min(args.batch_size, 8)
    env = data_env()
    print(f"hardware: {hardware_line(args.device)}")
    print(
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up", flush=True
    )
    if "matrix" in args.sections:
        matrix(args, env)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="genflow-gpu-") as tmp:
        work = Path(tmp)
        for name, section in (("resume", resume), ("ddp", ddp), ("eval", evaluate)):
            if name in args.sections:
                rows += section(args, env, work)
        if rows:
            print()
            width = max(len(check) for check, _ in rows) + 2
            print(f"{'check':<{width}}result")
            print("-" * (width + 40))
            for check, result in rows:
                print(f"{check:<{width}}{result}", flush=True)


if __name__ == "__main__":
    main()
