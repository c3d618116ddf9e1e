"""report.html: structure and escaping (parsed with the stdlib), then a real run's page opened in
headless Chromium.

The browser is driven through the DevTools protocol over `--remote-debugging-pipe` (fds 3/4,
JSON messages ended by NUL), with the stdlib only. Why not the simpler flags: `--dump-dom`
cannot tell whether an <img> decoded, and `--enable-logging=stderr` mixes the page's console
with Chromium's own noise (D-Bus errors on every start here), so "no console errors" could not be
checked reliably. Over the pipe the test reads the page's console and security log (a CSP
violation, a failed load) as structured events, and asks the page itself whether each image
decoded (`img.decode()`, `naturalWidth`). The screenshot uses the plain `--screenshot` flag.

Chromium is looked up as `chromium` (Debian: `apt-get install chromium`); without it the browser
tests skip, saying so.
"""

from __future__ import annotations

import fcntl
import html.parser
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.findings import Finding, Severity, Where
from traindoctor.report.html import render_html
from traindoctor.report.model import Report
from traindoctor.report.plots import Plots, PlotSkipped
from traindoctor.testing import make_timeline

pytest.importorskip("matplotlib")

SECTIONS = ("summary", "findings", "plots", "gradient-path", "internal-errors", "rule-docs")
CHROMIUM = os.environ.get("TRAINDOCTOR_CHROMIUM") or shutil.which("chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (Debian: apt-get install chromium fonts-liberation); "
    "the report.html browser tests need it",
)


# -- a real run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _plots_on():
    """These tests draw, even where a suite turns plotting off to save time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRAINDOCTOR_PLOTS", raising=False)
        yield


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 3)
        with torch.no_grad():  # BUG: every hidden unit starts far below zero: dead ReLUs
            self.fc1.bias.fill_(-6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """30 steps of a CPU run with a planted bug, validation metrics logged in doc.validating()."""
    out = tmp_path_factory.mktemp("runs")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 3, (128,), generator=g)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with td.watch(model, opt, out_dir=out, console=False) as doc:
        for step in range(30):
            i = step % 4 * 32
            opt.zero_grad()
            logits = model(x[i : i + 32])
            ce = F.cross_entropy(logits, y[i : i + 32])
            reg = 1e-3 * logits.pow(2).mean()
            (ce + reg).backward()
            opt.step()
            doc.log(loss=ce + reg, parts={"ce": ce, "reg": reg})
            if step % 5 == 4:
                with doc.validating(model):
                    val = model(x)
                    doc.log(
                        loss=F.cross_entropy(val, y), val_acc=(val.argmax(1) == y).float().mean()
                    )
    report = doc.report
    assert report is not None and report.run_dir is not None
    assert "TD303" in report.codes  # the planted bug is found: the page has findings to show
    return Path(report.run_dir)


# -- structure, without a browser ----------------------------------------------------------------


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(a["id"])


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    return c


def test_real_run_page_has_every_section_and_embeds_every_plot(run_dir):
    page = (run_dir / "report.html").read_text()
    doc = _parse(page)
    assert set(SECTIONS) <= doc.ids, set(SECTIONS) - doc.ids
    images = [a for t, a in doc.tags if t == "img"]
    pngs = sorted(p.stem for p in (run_dir / "plots").glob("*.png"))
    assert pngs == sorted(["loss", "metrics", "grad_norms", "update_ratio", "lr"])
    assert len(images) == len(pngs)
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    # No GradScaler in this run: the page says the plot is missing, and why.
    assert "plot-missing-grad_scaler" in doc.ids
    assert "the run used no GradScaler" in page
    assert "TD303" in page and "dead-relu" in page
    # TD502's evidence is the per-component table, not a dump of dicts.
    assert "<th>trainable</th>" in page and "{&#x27;params&#x27;" not in page


def test_page_is_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    doc = _parse(page)
    assert not [a for t, a in doc.tags if t in ("script", "link", "iframe", "object")]
    for tag, attrs in doc.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, key, value[:80])
    assert "url(" not in page  # no CSS fetch either
    assert "Content-Security-Policy" in page


def _hostile_report(tmp_path: Path) -> Report:
    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>&'
    finding = Finding(
        code="TD108",
        name="loss-not-decreasing",
        severity=Severity.WARNING,
        title=f"title {evil}",
        step=3,
        evidence={f"key {evil}": f"value {evil}", "n": 1.5},
        where=Where(module=f"m{evil}", params=(f"p{evil}",), op=f"op{evil}", source=f"{evil}:1"),
        cause=f"cause {evil}",
        fix=f"fix `{evil}`",
    )
    tl = make_timeline(
        params=["w"],
        facts={"run_id": f"run {evil}", "script": f"{evil}.py"},
        events=[
            {
                "kind": "gradient_path",
                "step": 1,
                "lines_known": True,
                "nodes": [{"index": 0, "op": evil, "source": evil, "verdict": evil, "zeroed": 0.5}],
            }
        ],
    )
    return Report(
        findings=[finding],
        steps=3,
        outcome={"ended": "exception", "exception": f"ValueError: {evil}", "step": 2},
        internal_errors=[{"where": f"probe {evil}", "error": evil, "step": 1}],
        run_dir=tmp_path / "hostile",
        timeline=tl,
    )


def test_every_user_string_is_escaped(tmp_path):
    page = render_html(
        _hostile_report(tmp_path), Plots(skipped=[PlotSkipped("lr", "LR", "<b>x</b>")])
    )
    doc = _parse(page)
    assert not [t for t, _ in doc.tags if t in ("script", "img")]
    assert "alert(" in page  # the text is shown, as text
    assert "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_gradient_path_section_only_when_a_walk_was_recorded():
    report = Report(findings=[], steps=2, timeline=make_timeline(params=["w"], steps={1: {}}))
    doc = _parse(render_html(report, Plots()))
    assert "gradient-path" not in doc.ids
    assert {"summary", "findings", "plots", "internal-errors"} <= doc.ids
    assert "No problems found." in render_html(report, Plots())


def test_page_without_timeline_still_renders(tmp_path):
    """`traindoctor report DIR` on a directory whose timeline.jsonl is gone."""
    report = _hostile_report(tmp_path)
    report.timeline = None
    page = render_html(report, Plots(skipped=[PlotSkipped("loss", "Loss", "no timeline")]))
    assert "gradient-path" not in _parse(page).ids
    assert "no timeline" in page


def test_cli_report_rerenders_the_page(run_dir, tmp_path):
    from traindoctor.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "plots")
    with pytest.raises(SystemExit) as done:
        main(["report", str(copy)])
    assert done.value.code in (0, None)
    assert (copy / "report.html").read_text() == (run_dir / "report.html").read_text()
    assert sorted(p.name for p in (copy / "plots").iterdir()) == sorted(
        p.name for p in (run_dir / "plots").iterdir()
    )


# -- in the browser ------------------------------------------------------------------------------


class DevTools:
    """Just enough of the Chrome DevTools protocol, over --remote-debugging-pipe."""

    def __init__(self, exe: str, profile: str) -> None:
        to_browser_r, self._w = _high(os.pipe())
        self._r, from_browser_w = _high(os.pipe())
        profile_log = open(os.path.join(profile, "chromium.log"), "wb")  # noqa: SIM115

        def on_fds_3_and_4() -> None:  # in the child, before exec
            # The browser reads commands on fd 3 and writes replies on fd 4. Both ends are
            # >= 10 (see _high), so neither dup2 can overwrite the other's source.
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            # close_fds=False: pass_fds cannot keep fds 3/4 that only exist in the child; the
            # parent's other fds are close-on-exec (Python's default), so none leaks.
            close_fds=False,
            preexec_fn=on_fds_3_and_4,  # noqa: PLW1509  (no threads start browsers here)
            stdout=subprocess.DEVNULL,
            stderr=profile_log,
        )
        profile_log.close()
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait(self, done, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" not in msg:
                    self.events.append(msg)
                if done(msg):
                    return msg
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError("no answer from Chromium")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the pipe")
                self._buf += chunk

    def open_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def load(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions and error log entries (CSP violations,
        failed loads) seen since the last load."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails"))[:300])
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
                out.append(json.dumps(p.get("args"))[:300])
            elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(p["entry"].get("text", "")[:300])
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001  (already gone, or stuck: stop our own process)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to fds >= 10 (close-on-exec), so that mapping them to 3 and 4 in
    the child cannot overwrite one with the other (a pipe end that happens to be fd 3 or 4)."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved  # type: ignore[return-value]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium)")
    devtools = DevTools(CHROMIUM, str(tmp_path_factory.mktemp("chromium-profile")))
    try:
        devtools.open_page()
        yield devtools
    finally:
        devtools.close()


# Asks the page itself: which sections exist, and did each image decode?
PAGE_CHECK = """
(async () => {
  const images = await Promise.all([...document.images].map(img =>
    img.decode().then(() => [img.alt, img.naturalWidth, img.naturalHeight],
                      () => [img.alt, 0, 0])));
  return {
    sections: [...document.querySelectorAll('[id]')].map(e => e.id),
    images: images,
    findings: document.querySelectorAll('article.finding').length,
    scripts: document.scripts.length,
    width: document.documentElement.scrollWidth,
    title: document.title,
  };
})()
"""


@needs_chromium
def test_browser_renders_the_real_report(browser, run_dir):
    browser.load((run_dir / "report.html").resolve().as_uri())
    page = browser.evaluate(PAGE_CHECK)
    assert browser.problems() == []
    assert set(SECTIONS) <= set(page["sections"]), page["sections"]
    assert len(page["images"]) == 5, page["images"]
    for alt, width, height in page["images"]:
        assert width > 0 and height > 0, f"plot {alt!r} did not decode"
    assert page["findings"] >= 1
    assert page["scripts"] == 0
    assert page["width"] <= 1280  # no horizontal scrolling at a laptop's width
    status = json.loads((run_dir / "findings.json").read_text())["status"]
    assert page["title"].startswith(f"traindoctor · {status}")


@needs_chromium
def test_browser_shows_hostile_strings_as_text(browser, tmp_path):
    report = _hostile_report(tmp_path)
    path = tmp_path / "hostile.html"
    path.write_text(render_html(report, Plots()), encoding="utf-8")
    browser.load(path.as_uri())
    counts = browser.evaluate(
        "({scripts: document.scripts.length, images: document.images.length,"
        " text: document.body.innerText})"
    )
    assert browser.problems() == []  # an executed onerror or blocked script would show here
    assert counts["scripts"] == 0 and counts["images"] == 0
    assert '<img src=x onerror="alert(1)">' in counts["text"]


@needs_chromium
def test_screenshot_is_not_blank(run_dir, tmp_path):
    from PIL import Image, ImageStat

    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1280,2000",
                (run_dir / "report.html").resolve().as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=True,
        )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    variance = ImageStat.Stat(img.convert("L")).var[0]
    assert variance > 100, f"screenshot looks blank (pixel variance {variance:.1f})"
    # The header is drawn at the top: dark text over a light background in the first 200 rows.
    top = img.crop((0, 0, 1280, 200)).convert("L")
    lo, hi = top.getextrema()
    assert hi - lo > 150, (lo, hi)
    if os.environ.get("TRAINDOCTOR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["TRAINDOCTOR_KEEP_SCREENSHOT"])


def test_no_stray_references_in_css():
    from traindoctor.report.html import CSS

    assert not re.search(r"@import|url\(", CSS)


def test_a_run_that_ran_no_step_is_not_called_healthy():
    """A script that raised before its first step was not judged: its headlines say so (the
    schema's `status` stays as it is)."""
    from traindoctor.report.markdown import render_markdown
    from traindoctor.report.text import summary_line

    report = Report(findings=[], steps=0, outcome={"ended": "exception", "step": 1})
    assert report.status == "healthy" and report.shown_status == "not diagnosed"
    assert summary_line(report) == "nothing diagnosed: no training step ran"
    assert render_markdown(report).startswith("# traindoctor report: not diagnosed")
    assert '<span class="badge info">not diagnosed</span>' in render_html(report, Plots())
    ran = Report(findings=[], steps=3)
    assert ran.shown_status == "healthy" and summary_line(ran).startswith("healthy: no problems")
