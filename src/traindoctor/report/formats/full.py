"""`full`: today's console summary as plain text (what `--output-file` writes; the terminal
gets the same with colours)."""

from __future__ import annotations

from ..console import render_text
from ..model import Report


def render(report: Report) -> str:
    return render_text(report)
