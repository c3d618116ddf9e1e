"""Errors traindoctor raises at its API boundary. Each message says what was wrong and what to pass."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input to a public traindoctor function or command. The message is one line."""


class StopTraining(BaseException):  # noqa: N818  (a control-flow signal, like KeyboardInterrupt)
    """Raised into the user's loop by `--max-steps` to end the run cleanly after N optimizer steps.

    It derives from BaseException so that a user's `except Exception:` does not swallow it.
    """
