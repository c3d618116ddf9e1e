"""`traindoctor run/check --export TRACKERS`: sets TRAINDOCTOR_EXPORT for the command's
duration (restored when it ends), so every Doctor the run makes (zero-code, or a framework's
callback inside the script) posts to the trackers named. No torch here."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from ..._validate import EXPORT_ENV, parse_export
from ...errors import UsageError

HELP = (
    "Experiment trackers to post findings to: auto (default: the W&B run, TensorBoard "
    "SummaryWriters, MLflow run the script has active), none, or a comma-separated list of "
    "wandb, tensorboard, mlflow."
)


def export_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """The `--export` click option (it passes no argument to the command)."""
    return click.option(
        "--export",
        metavar="TRACKERS",
        default=None,
        expose_value=False,
        callback=_set_env,
        help=HELP,
    )(f)


def _set_env(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        parsed = parse_export("--export", value)
    except UsageError as e:
        raise click.UsageError(str(e), ctx=ctx) from None
    text = parsed if isinstance(parsed, str) else ",".join(parsed) or "none"
    old = os.environ.get(EXPORT_ENV)
    os.environ[EXPORT_ENV] = text

    def restore() -> None:
        if old is None:
            os.environ.pop(EXPORT_ENV, None)
        else:
            os.environ[EXPORT_ENV] = old

    ctx.call_on_close(restore)
