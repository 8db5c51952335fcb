"""User-facing errors: one clear sentence, caught at the task boundary and turned into exit code 2."""


class GenflowError(Exception):
    """Bad input from the user (config value, path, data); the message is shown as is."""


def first_cause(err: BaseException) -> str:
    """One line saying what went wrong under a wrapper (e.g. Hydra's InstantiationException)."""
    cause = err.__cause__ if err.__cause__ is not None else err
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
