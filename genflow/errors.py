"""User-facing errors: one clear sentence, caught at the task boundary and turned into exit code 2."""


class GenflowError(Exception):
    """Bad input from the user (config value, path, data); the message is shown as is."""
