"""A fuzzer for run directories from elsewhere: take a small real run, damage one of its files at a
time (truncate it, corrupt bytes, empty it, make it a link to a file outside, make it a folder,
make it unreadable, put a named pipe in its place), and run eval, sample, report, load_run and a resume's checks against the
copy. Every case must end in success or one sentence (a GenflowError, exit 2 on the command
line), and leave the file outside byte-identical.

Cases per command, (files of the run) x 7 damages, for the three kinds of run:

| run                          | files | eval | sample | report | load_run | resume | all |
|------------------------------|-------|------|--------|--------|----------|--------|-----|
| flow (RealNVP, digits)       | 10    | 70   | 70     | 70     | 70       | 70     | 350 |
| VAE (Gaussian, digits)       | 10    | 70   | 70     | 70     | 70       | 70     | 350 |
| ARM (PixelCNN, digits)       | 10    | 70   | 70     | 70     | 70       | 70     | 350 |

(each run's files: the three .hydra configs, the best/last/last.prev checkpoints,
metrics.jsonl, train.log, eval.json and one picture; the test checks the count). The suite runs
as root in CI, where a file's mode does not stop a read, so an unreadable file is every open of
it failing with EACCES, as for a file of mode 000. The fuzzer takes about ten minutes, so it
carries the ``slow`` marker: ``pytest -m slow`` runs it, and CI runs it after the quick suite.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MODEL_TINY, RUN_TINY, TINY, compose_config, run_dirs, run_genflow
from omegaconf import OmegaConf

import genflow
from genflow.config import config_dir
from genflow.errors import GenflowError
from genflow.report import main as report_main
from genflow.tasks import eval as eval_task
from genflow.tasks import sample as sample_task
from genflow.tasks import train as train_task

OUTSIDE = b"the user's own file, which must stay as it is\n"


def _truncate(path: Path, outside: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _corrupt(path: Path, outside: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff\x00{[:" * 12 + b"\xfe" * 4
    path.write_bytes(bytes(data))


def _empty(path: Path, outside: Path) -> None:
    path.write_bytes(b"")


def _link_outside(path: Path, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside)


def _folder(path: Path, outside: Path) -> None:
    path.unlink()
    path.mkdir()


def _pipe(path: Path, outside: Path) -> None:
    """A named pipe in the file's place: a read of it would wait for a writer forever."""
    path.unlink()
    os.mkfifo(path)


def _unreadable(path: Path, outside: Path) -> None:
    """Nothing to change on disk: the suite runs as root, where a mode of 000 stops no read, so
    every open of this file fails with EACCES while the command runs (``_reads_refused``)."""


DAMAGES = {
    "truncate": _truncate,
    "corrupt": _corrupt,
    "empty": _empty,
    "link": _link_outside,
    "folder": _folder,
    "unreadable": _unreadable,
    "pipe": _pipe,
}


@contextmanager
def _reads_refused(path: Path | None):
    """Open, io.open and os.open of ``path`` fail as they do for an unreadable file."""
    if path is None:
        yield
        return
    target = path.resolve()
    real_open, real_os_open = builtins.open, os.open

    def refused(file) -> bool:
        if isinstance(file, int):
            return False
        return Path(os.fspath(file)).resolve() == target

    def guarded_open(file, *args, **kwargs):
        if refused(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def guarded_os_open(file, *args, **kwargs):
        if refused(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_os_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", guarded_open)
        patch.setattr(io, "open", guarded_open)
        patch.setattr(os, "open", guarded_os_open)
        yield


RUNS = {
    "flow": TINY,
    "vae": ["model=vae", *MODEL_TINY["vae"], *RUN_TINY],
    "arm": ["model=pixelcnn", *MODEL_TINY["pixelcnn"], *RUN_TINY],
}


@pytest.fixture(scope="module", params=list(RUNS))
def real_run(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    run_genflow(["train", *RUNS[request.param]], root)
    (run,) = run_dirs(root)
    return run


def _files(run: Path) -> list[str]:
    files = sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != ".lock"
    )
    pictures = [f for f in files if f.startswith("samples/")]
    return [f for f in files if not f.startswith("samples/")] + pictures[:1]


def _eval(run: Path) -> None:
    eval_task.run(compose_config([f"run={run}", "device=cpu", "batch_size=500"], name="eval"))


def _sample(run: Path) -> None:
    sample_task.run(compose_config([f"run={run}", "device=cpu", "sample.n=4"], name="sample"))


def _report(run: Path) -> None:
    if report_main([str(run), "--out", str(run.parent / "report")]) != 0:
        raise AssertionError("report returned non-zero without an error")


def _load_run(run: Path) -> None:
    genflow.load_run(run).sample(2, seed=0)


class _Hydra:
    """What accept() asks of HydraConfig: the overrides to store."""

    @staticmethod
    def get():
        return OmegaConf.create({"overrides": {"task": []}})


def _resume(run: Path, monkeypatch) -> None:
    """A resume's checks, as genflow train resume=<run> makes them before training: the command
    line with the run's stored overrides, its folders, the checkpoint and the weights."""
    from genflow.preflight import compose_train, preflight

    overrides = preflight("train", [f"resume={run}"], config_dir())
    cfg = compose_train([o for o in overrides if not o.startswith("hydra.")], config_dir())
    monkeypatch.setattr(train_task, "HydraConfig", _Hydra)
    train_task.accept(cfg, train_task.RunDir(run))


COMMANDS = ("eval", "sample", "report", "load_run", "resume")


@pytest.mark.slow
def test_every_damaged_file_of_a_run_ends_in_success_or_one_sentence(
    real_run, tmp_path, monkeypatch, capsys
):
    files = _files(real_run)
    assert len(files) == 10 and "checkpoints/best.pt" in files and "eval.json" in files, files
    outside = tmp_path / "outside.txt"
    outside.write_bytes(OUTSIDE)
    failures, outcomes = [], {command: {"ok": 0, "refused": 0} for command in COMMANDS}
    for n, name in enumerate(files):
        for damage, apply in DAMAGES.items():
            for command in COMMANDS:  # each on its own copy: eval rewrites eval.json, say
                run = tmp_path / f"case{n}_{damage}_{command}" / "run"
                shutil.copytree(real_run, run, symlinks=True)
                apply(run / name, outside)
                try:
                    with _reads_refused(run / name if damage == "unreadable" else None):
                        if command == "resume":
                            _resume(run, monkeypatch)
                        else:
                            globals()[f"_{command}"](run)
                    outcomes[command]["ok"] += 1
                except GenflowError as err:
                    outcomes[command]["refused"] += 1
                    if "\n" in str(err).strip():
                        failures.append(f"{name} {damage} {command}: several lines: {err}")
                except Exception as err:  # a traceback on the command line
                    failures.append(f"{name} {damage} {command}: {type(err).__name__}: {err}")
                if outside.read_bytes() != OUTSIDE:
                    failures.append(f"{name} {damage} {command}: wrote through the link")
                    outside.write_bytes(OUTSIDE)
                shutil.rmtree(run.parent)
                capsys.readouterr()
    assert not failures, "\n".join(failures)
    # the damages do something: each command refuses some cases and gets through others
    assert all(o["ok"] and o["refused"] for o in outcomes.values()), outcomes
