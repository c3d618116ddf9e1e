"""A finding's loss curves in the three renderers (report/curves.py): the experiments' own
(`evidence["curves"]`) and a fix trial's (`evidence["trial"]["curves"]`), as one text line
(console, report.md), an inline SVG (report.html) and plots/curves-<rank>-<code>.png."""

from __future__ import annotations

import dataclasses
import html.parser
import math
import os
import shutil
import subprocess
import tempfile

import pytest

from traindoctor.findings import Finding, Severity, Where
from traindoctor.report import write_run
from traindoctor.report.console import render_text
from traindoctor.report.curves import curve_groups, curves_text, one_curve_text
from traindoctor.report.html import render_html
from traindoctor.report.markdown import render_markdown
from traindoctor.report.model import Report
from traindoctor.report.plots import Plots
from traindoctor.testing import make_timeline

CHROMIUM = os.environ.get("TRAINDOCTOR_CHROMIUM") or shutil.which("chromium")


def _finding() -> Finding:
    return Finding(
        code="TD702",
        name="cannot-overfit-one-batch",
        severity=Severity.WARNING,
        title="t",
        step=3,
        evidence={
            "verdict": "failed",
            "curves": {
                "lr x1": [2.3, 2.0, 1.9, 1.85],
                "lr x10": [2.3, 9.0, float("nan")],
                "lr <b>x0.1</b>": [2.3, 2.2, 2.1, 2.05],
            },
            "trial": {"curves": {"as written": [2.3, 4.0, 6.7], "with fix": [2.3, 1.5, 1.12]}},
        },
        where=Where(source="train.py:12"),
    )


def _plain() -> Finding:
    return Finding(
        code="TD108", name="loss-not-decreasing", severity=Severity.WARNING, title="x", step=1
    )


def _report(tmp_path, findings) -> Report:
    return Report(
        findings=findings,
        steps=3,
        run_dir=tmp_path / "run",
        timeline=make_timeline(params=["w"], steps={1: {}}),
    )


def test_groups_and_text_line():
    f = _finding()
    groups = curve_groups(f)
    assert [g.title for g in groups] == ["experiment on a copy", "fix trial"]
    assert math.isnan(groups[0].curves["lr x10"][2])
    text = curves_text(f)
    assert text.startswith("lr x1: 2.3 -> 1.85 in 3 steps; lr x10: 2.3 -> nan at step 2")
    assert "fix trial: as written: 2.3 -> 6.7 in 2 steps; with fix: 2.3 -> 1.12 in 2 steps" in text
    assert curves_text(_plain()) is None
    # Values as findings.json gives them back: "nan" strings, None.
    assert one_curve_text([2.0, "inf"]) == "2 -> inf at step 1"  # type: ignore[list-item]
    assert curve_groups(dataclasses.replace(_finding(), evidence={"curves": {"a": []}})) == []


def test_console_and_markdown_show_the_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "1")
    report = _report(tmp_path, [_plain(), _finding()])
    console = render_text(report, width=400)
    assert "curves    lr x1: 2.3 -> 1.85 in 3 steps" in console
    md = render_markdown(report)
    assert "- **Curves:** lr x1: 2.3 -> 1.85" in md
    assert "![TD702 curves](plots/curves-2-TD702.png)" in md
    assert md.count("**Curves:**") == 1  # the finding without curves has no line
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "0")
    md = render_markdown(report)
    assert "- **Curves:** lr x1" in md and "plots/curves-" not in md
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "1")
    report.timeline = None  # a merged job's report: no plot is drawn beside it
    assert "plots/curves-" not in render_markdown(report)


def test_png_written_for_report_md(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "1")
    report = _report(tmp_path, [_plain(), _finding()])
    write_run(report)
    png = tmp_path / "run" / "plots" / "curves-2-TD702.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.internal_errors, report.internal_errors
    page = (tmp_path / "run" / "report.html").read_text()
    assert "curves-2-TD702" not in page  # drawn inline in the page, not as a plot image
    monkeypatch.setenv("TRAINDOCTOR_PLOTS", "0")
    other = _report(tmp_path / "off", [_finding()])
    write_run(other)
    assert not (tmp_path / "off" / "run" / "plots" / "curves-1-TD702.png").exists()


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_draws_inline_svg_escaped(tmp_path):
    page = render_html(_report(tmp_path, [_finding()]), Plots())
    doc = _Tags()
    doc.feed(page)
    svgs = [a for t, a in doc.tags if t == "svg"]
    assert len(svgs) == 2  # the experiment's and the fix trial's
    lines = [t for t, _ in doc.tags if t == "polyline"]
    assert len(lines) == 5
    assert "lr &lt;b&gt;x0.1&lt;/b&gt;" in page and "<b>x0.1</b>" not in page
    assert not [t for t, _ in doc.tags if t in ("script", "img")]
    # The curves are not dumped again in the evidence table.
    assert "[2.3, 2, 1.9, 1.85]" not in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found")
def test_browser_draws_the_curves(tmp_path):
    """A screenshot of the page: the curves' colours are on it (the SVG rendered)."""
    from PIL import Image

    page = tmp_path / "curves.html"
    page.write_text(render_html(_report(tmp_path, [_finding()]), Plots()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1100,1400",
                page.resolve().as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=True,
        )
    img = Image.open(shot).convert("RGB")
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}

    def near(rgb):
        return any(sum(abs(a - b) for a, b in zip(rgb, c)) < 40 for c in colours)

    assert near((0x1F, 0x77, 0xB4)) and near((0xFF, 0x7F, 0x0E)), "curve strokes not drawn"
