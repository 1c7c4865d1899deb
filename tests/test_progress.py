"""Progress bars only where a person watches a terminal: never in logs, CI or sweep workers."""

from __future__ import annotations

import io

import pytest

from mtv_eval import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "terminal", "expected"),
    [
        ({}, True, True),
        ({}, False, False),  # a log file or a pipe
        ({"CI": "true"}, True, False),
        ({"TQDM_DISABLE": "1"}, True, False),  # what sweep workers set, and what a user may set
        ({"TQDM_DISABLE": "0"}, True, True),
    ],
)
def test_bars_are_drawn_only_on_a_terminal_outside_ci_unless_disabled(
    env: dict[str, str], terminal: bool, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CI", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stderr", _Terminal() if terminal else io.StringIO())
    assert progress.interactive() is expected
