"""Every file genflow writes goes through here, so nothing is written outside its run directory.

A run directory may come from elsewhere (a colleague's tarball, a copy off a cluster), and a tar
can carry symbolic links: ``eval.json`` or ``samples/`` pointing at the user's own files. So a
file is never written through its path: it is written to a temporary file beside it and renamed
over it, which replaces a link there instead of following it, and a folder that resolves
outside the run directory is refused. Appends (metrics.jsonl, train.log) cannot be done by a
rename: they are refused when the path is a link. A folder that cannot be written (read-only,
full) is one sentence naming it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from genflow.errors import GenflowError

_COUNTER = itertools.count()


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def check_folder(folder: Path, root: Path | None) -> None:
    """Refuse a folder that lies, once its links are followed, outside ``root``."""
    if root is not None and not _inside(folder, root):
        raise GenflowError(
            f"{folder} leads outside the run directory {root} (to {folder.resolve()}, through a "
            "symbolic link); genflow writes nothing outside a run directory: remove the link"
        )


def temporary_name(path: Path) -> Path:
    """``.<stem>.tmp-<pid>-<n><suffix>`` beside ``path``: hidden, unique to this process, and
    with the suffix that picture writers read the format from."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{next(_COUNTER)}{path.suffix}")


class CannotWrite(GenflowError):
    """A file or folder the operating system would not let genflow write."""


def _cannot_write(path: Path, err: OSError) -> GenflowError:
    reason = err.strerror or str(err)
    return CannotWrite(
        f"cannot write {path}: {reason.lower()} (is its folder read-only, or the disk full?); "
        "nothing already there was changed"
    )


def unreadable(path: Path, err: BaseException) -> GenflowError | None:
    """One sentence for a file the operating system will not let genflow read (its mode, a
    folder in its place), as opposed to one whose content is damaged; None for the latter."""
    if isinstance(err, (PermissionError, IsADirectoryError)):
        return GenflowError(f"cannot read {path}: {(err.strerror or str(err)).lower()}")
    return None


@contextmanager
def replacing(
    path: str | Path, root: str | Path | None = None, sync: bool = False
) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` to write the whole file to; when the block
    ends without an error, rename it over ``path`` (fsync first with ``sync``). A link at
    ``path`` is replaced, never written through; ``path``'s folder must lie inside ``root``."""
    path = Path(path)
    root_path = None if root is None else Path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cannot_write(path, err) from err
    check_folder(path.parent, root_path)
    tmp = temporary_name(path)
    try:  # created here, exclusively: never an existing file or a link someone put there
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise _cannot_write(path, err) from err
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise _cannot_write(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def probe_folder(folder: str | Path) -> Path:
    """Make sure files can be written into ``folder`` (made if missing) before the work that
    produces them: a read-only folder is one sentence now, not after minutes of evaluation."""
    folder = Path(folder)
    probe = temporary_name(folder / "probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as err:  # read-only, or a path through a file
        raise _cannot_write(folder, err) from err
    return folder


def write_text(path: str | Path, text: str, root: str | Path | None = None) -> None:
    with replacing(path, root) as tmp:
        tmp.write_text(text)


def write_with(
    path: str | Path,
    write: Callable[[IO[Any]], Any],
    root: str | Path | None = None,
    mode: str = "w",
) -> None:
    """``write(f)`` into a file opened with ``mode`` ("w" or "wb"), then renamed over ``path``."""
    with (
        replacing(path, root) as tmp,
        open(tmp, mode, newline="" if "b" not in mode else None) as f,
    ):
        write(f)


def check_appendable(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` may be appended to: not a link, in a folder inside ``root``."""
    path = Path(path)
    check_folder(path.parent, None if root is None else Path(root))
    if path.is_symlink():
        raise GenflowError(
            f"{path} is a symbolic link (to {os.readlink(path)}); genflow appends only to a plain "
            "file in its run directory: remove the link"
        )
    return path


def append_text(path: str | Path, text: str, root: str | Path | None = None) -> None:
    path = check_appendable(path, root)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666
        )
    except OSError as err:
        raise _cannot_write(path, err) from err
    with os.fdopen(fd, "a") as f:
        f.write(text)


def save_figure(fig, path: str | Path, **kwargs: Any) -> None:
    """A matplotlib figure to ``path``, by the same rename."""
    with replacing(path) as tmp:
        fig.savefig(tmp, **kwargs)


def save_tensor(value: Any, path: str | Path) -> None:
    """``torch.save`` to ``path``, by the same rename."""
    import torch

    write_with(path, lambda f: torch.save(value, f), mode="wb")
