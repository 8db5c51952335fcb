"""User-facing errors: one clear sentence, caught at the task boundary and turned into exit code 2."""

import errno


class GenflowError(Exception):
    """Bad input from the user (config value, path, data); the message is shown as is."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def first_cause(err: BaseException) -> str:
    """One line saying what went wrong under a wrapper (e.g. Hydra's InstantiationException)."""
    return first_line(err.__cause__ if err.__cause__ is not None else err)


# what a full disk, a quota, a file-size limit or a read-only mount raise on a write
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def storage_error(err: BaseException) -> "GenflowError | None":
    """A write that failed for lack of space (or a limit) as one sentence; None otherwise."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        where = f" writing {err.filename}" if err.filename else ""
        return GenflowError(
            f"{err.strerror}{where}: the disk is full or a quota or file-size limit was "
            "reached; free space, then continue the run with resume=<run_dir>"
        )
    return None
