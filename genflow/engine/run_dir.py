"""One run directory: its layout, and the answers to "which run, which checkpoint".

Every path inside a run directory is spelled here and nowhere else:

    .lock                                       "host pid" of the process training here
    .hydra/config.yaml, .hydra/overrides.yaml   what Hydra composed, and from which overrides
    metrics.jsonl                               one JSON object per event (the RunLogger's)
    checkpoints/last.pt, last.prev.pt, best.pt  the newest state, its predecessor, the best
    samples/<name>_<step>.png                   pictures during training and from genflow sample
    eval.json, eval_<checkpoint>_<split>.json   best.pt's test metrics; other checkpoints', splits'
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from genflow.engine.checkpoint import previous_path
from genflow.engine.files import check_appendable, check_folder, unreadable, write_text
from genflow.errors import GenflowError, first_line

CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
# keys that do not make two runs different for resume=auto: where to log, how much to show,
# and how far to train (so resume=auto with a larger trainer.max_steps continues a run)
RESUME_FREE_KEYS = (
    "resume",
    "logger",
    "trainer.progress_bar",
    "trainer.log_every",
    "trainer.max_steps",
    "trainer.max_minutes",
    "optimizer.lr",  # a resume goes on at the new rate (the NaN stop's advice: lower it)
)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout ----------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def picture(self, name: str, step: int) -> Path:
        return self.samples / f"{name}_{step:07d}.png"

    @property
    def config_file(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def overrides_file(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    def check_files(self) -> None:
        """Refuse a run directory that holds, or links to, something that is neither a file
        nor a folder (a named pipe, a socket, a device such as /dev/zero) where genflow reads:
        the run's own files, checkpoints/ and .hydra/. Reading one would block or never end,
        and a tarball can carry them."""
        for folder in (self.path, self.checkpoints, self.config_file.parent):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # missing or not a folder: each reader names what it lacks
            for entry in entries:
                try:
                    mode = os.stat(entry.path).st_mode  # through a link: what a read opens
                except OSError:
                    continue  # a broken link: missing, which each reader names
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise GenflowError(
                        f"{entry.path} is {_special_kind(mode)}, not a file; genflow reads "
                        "only files and folders from a run directory: remove it"
                    )

    def check_writable(self, appends: bool = True) -> None:
        """Refuse, before anything is written, a run directory whose folders lead outside it
        or whose appended files (metrics.jsonl, train.log) are links: a directory received
        from elsewhere may carry such links. Single files are replaced by a rename when
        written (genflow.engine.files), so a link at one is never written through."""
        self.check_files()
        for folder in (self.checkpoints, self.samples, self.config_file.parent):
            check_folder(folder, self.path)
        for file in (self.metrics, self.log_file) if appends else ():
            check_appendable(file, self.path)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory for one training process: two at once (two resumes of one run,
        or two runs started in the same second) would overwrite each other's checkpoints.
        The lock is released on exit; one left by a process that died on this machine is
        stale and taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.lock_file
        me = f"{socket.gethostname()} {os.getpid()}"
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = lock.read_text().strip() if lock.exists() else ""
                if holder and _is_dead(holder):
                    lock.unlink(missing_ok=True)  # its process is gone: take it over
                    continue
                host, _, pid = holder.partition(" ")
                raise GenflowError(
                    f"run directory {self.path} is in use by process {pid or '?'} on "
                    f"{host or '?'}; wait for it to finish (if that process is gone, delete "
                    f"{lock})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            break
        try:
            yield
        finally:
            if lock.exists() and lock.read_text().strip() == me:
                lock.unlink()

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def in_use(self) -> bool:
        """A process holds the lock: a live one here, or one on another machine."""
        holder = self.lock_file.read_text().strip() if self.lock_file.is_file() else ""
        return bool(holder) and not _is_dead(holder)

    def holds_run(self) -> bool:
        """A run was trained here: a checkpoint or training records exist."""
        return bool(self.last_checkpoints()) or self.metrics.exists()

    def write_config(self, cfg, hydra_cfg) -> None:
        """``.hydra/`` as Hydra writes it (config.yaml, hydra.yaml, overrides.yaml), unresolved,
        written only once a run has been accepted for this directory."""
        folder = self.config_file.parent
        for path, node in (
            (self.config_file, cfg),
            (folder / "hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
            (self.overrides_file, hydra_cfg.overrides.task),
        ):
            write_text(path, OmegaConf.to_yaml(node, resolve=False), self.path)

    def eval_json(self, split: str = "test", checkpoint: str = "best.pt") -> Path:
        """eval.json holds the best checkpoint's test metrics; other checkpoints and splits
        get their own file (eval_last.json, eval_val.json, eval_last_val.json ...)."""
        parts = ["eval"]
        stem = Path(checkpoint).stem
        if stem != "best":
            parts.append(stem)
        if split != "test":
            parts.append(split)
        return self.path / ("_".join(parts) + ".json")

    # -- which checkpoint ----------------------------------------------------------------
    def last_checkpoints(self) -> list[Path]:
        """The existing ``last.pt`` and the checkpoint it replaced, newest first: what a
        resume or a rollback tries in order, so a damaged last.pt falls back to the one
        before it."""
        last = self.checkpoint(LAST)
        return [p for p in (last, previous_path(last)) if p.exists()]

    def final_checkpoint(self, best_step: int) -> Path:
        """What the end-of-training test scores: best.pt, or last.pt if no validation ran."""
        return self.checkpoint(BEST if best_step > 0 else LAST)

    def find_checkpoint(self, which: str = "best") -> Path:
        """``which`` is best, last or a file name under checkpoints/; best falls back to last
        (a run stopped before its first validation)."""
        candidates = [self.checkpoint(f"{which}.pt"), self.checkpoint(which)]
        if which == "best":
            candidates.append(self.checkpoint(LAST))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise GenflowError(
            f"run {self.path} has no checkpoint '{which}' under {self.checkpoints} "
            "(valid: best, last, or a file name)"
        )

    def newest_checkpoint_time(self) -> float:
        times = [p.stat().st_mtime for p in self.checkpoints.glob("last*.pt")]
        return max(times, default=0.0)

    # -- which run -----------------------------------------------------------------------
    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        parent = checkpoint.parent
        return cls(parent.parent if parent.name == CHECKPOINTS else parent)

    @classmethod
    def locate(cls, run: str | Path, which: str = "best") -> tuple[RunDir, Path]:
        """``run`` (what a user passes as run=) is a run directory or a checkpoint file:
        the run and the checkpoint to use."""
        path = Path(str(run)).expanduser()
        if path.is_file():
            return cls.of_checkpoint(path), path
        if not path.is_dir():
            raise GenflowError(f"run={run}: no such run directory or checkpoint file")
        run_dir = cls(path)
        run_dir.check_files()
        return run_dir, run_dir.find_checkpoint(which)

    def resume_candidates(self, resume: str | None) -> list[Path]:
        """Checkpoints to continue this run from, in order: ``resume`` is null, auto, a run
        directory or a checkpoint file. A run directory (and auto, which resolves to this
        one) gives last.pt then last.prev.pt, so a damaged last.pt falls back to the one
        before it; a file named explicitly is used alone."""
        if resume in (None, "", False):
            return []
        path = self.path if resume == "auto" else Path(str(resume)).expanduser()
        if path.is_file():
            return [path]
        candidates = RunDir(path).last_checkpoints()
        if not candidates and resume != "auto":
            raise GenflowError(
                f"resume={resume}: not a checkpoint file nor a run directory with "
                f"{CHECKPOINTS}/last.pt"
            )
        return candidates

    def stored_overrides(self) -> list[str]:
        """The command line the run was started with, less Hydra's own settings (``hydra.*``
        and ``hydra/...`` groups, with any ``+``/``~`` prefix: launchers, callbacks, sweepers,
        which a new process must never take from a stored file) and ``resume=``."""
        path = self.overrides_file
        if not path.is_file():
            return []
        try:
            stored = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as err:
            raise unreadable(path, err) or GenflowError(
                f"{path} is not a YAML list of overrides ({first_line(err)})"
            ) from err
        if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
            raise GenflowError(f"{path} is not a YAML list of overrides (key=value strings)")
        return [o for o in stored if not _is_launch_setting(o)]

    @classmethod
    def find_matching(cls, cfg) -> RunDir | None:
        """The run under ``cfg.output_root`` with a checkpoint whose stored config equals
        ``cfg`` but for RESUME_FREE_KEYS (resume=auto): an interrupted one (its last.pt newer
        than its eval.json) before a finished one, the newest first. Both configs are
        compared unresolved, so ``${now:...}`` and environment lookups do not differ."""
        match, _ = cls.nearest(cfg)
        return match

    @classmethod
    def nearest(cls, cfg) -> tuple[RunDir | None, tuple[RunDir, list[str]] | None]:
        """(the matching run, None), or (None, (the run that differs in the fewest keys, those
        keys as "key: stored -> asked")) when nothing matches; (None, None) without runs."""
        target = _flat(cfg)
        runs = [
            cls(p.parent.parent) for p in Path(str(cfg.output_root)).glob("**/.hydra/config.yaml")
        ]
        runs = [run for run in runs if run.newest_checkpoint_time() > 0.0]
        runs.sort(key=lambda run: (run.finished(), -run.newest_checkpoint_time()))
        closest: tuple[RunDir, list[str]] | None = None
        for run in runs:
            stored = _flat(OmegaConf.load(run.config_file))
            keys = sorted(
                k for k in stored.keys() | target.keys() if stored.get(k) != target.get(k)
            )
            if not keys:
                return run, None
            if closest is None or len(keys) < len(closest[1]):
                closest = (run, [f"{k}: {stored.get(k)} -> {target.get(k)}" for k in keys])
        return None, closest

    def finished(self) -> bool:
        """Tested after its last checkpoint: eval.json is newer than last.pt."""
        last, result = self.checkpoint(LAST), self.eval_json()
        return result.exists() and last.exists() and result.stat().st_mtime >= last.stat().st_mtime


def _is_dead(holder: str) -> bool:
    """A lock's "host pid" names a process on this machine that no longer runs."""
    host, _, pid = holder.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: cannot tell, so it is held
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _flat(cfg) -> dict[str, object]:
    """The unresolved config as dotted keys, without RESUME_FREE_KEYS."""
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if any(name == free or name.startswith(free + ".") for free in RESUME_FREE_KEYS):
                continue
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                out[name] = value

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _is_launch_setting(override: str) -> bool:
    """hydra.*, hydra/<group>=..., resume=..., with or without a +, ++ or ~ in front."""
    key = override.lstrip("+~").split("=", 1)[0].strip()
    return key == "resume" or key == "hydra" or key.startswith(("hydra.", "hydra/"))
