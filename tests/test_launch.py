"""The launcher's one map from error classes to exit codes, and the sentence it prints."""

from __future__ import annotations

import signal

import pytest

from genflow.engine.launch import WorkerFailed, exit_code, report
from genflow.engine.preemption import Preempted
from genflow.errors import GenflowError


@pytest.mark.parametrize(
    ("err", "code", "said"),
    [
        (GenflowError("optimizer.lr must be positive"), 2, "genflow: error: optimizer.lr"),
        (Preempted(signal.SIGTERM, 12, "last.pt"), 128 + signal.SIGTERM, "genflow: "),
        (WorkerFailed(3, "DDP worker rank 1 exited with code 3"), 3, "genflow: DDP worker"),
        (WorkerFailed(0, "DDP workers stopped"), 1, "genflow: DDP workers stopped"),
    ],
)
def test_every_error_class_has_its_exit_code(err, code, said, capsys):
    assert exit_code(err) == code
    assert report(err) == code
    assert capsys.readouterr().err.startswith(said)


def test_a_bug_has_no_exit_code_and_is_not_reported(capsys):
    assert exit_code(ValueError("a bug")) is None and report(ValueError("a bug")) is None
    assert capsys.readouterr().err == ""
