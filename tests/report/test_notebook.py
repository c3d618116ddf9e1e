"""Jupyter (report/notebook.py): a Report shown inline, and td.watch's live status in the cell.

The fast tests use a stand-in kernel shell (a class named ZMQInteractiveShell, and a recording
IPython.display); the slow one executes a real notebook with nbclient on this venv's python
(a kernelspec written in tmp, found through JUPYTER_PATH) and screenshots its outputs with
headless Chromium where it is installed.
"""

from __future__ import annotations

import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.findings import Finding, Severity, Where
from traindoctor.report import notebook
from traindoctor.report.model import Report
from traindoctor.testing import make_timeline

CHROMIUM = os.environ.get("TRAINDOCTOR_CHROMIUM") or shutil.which("chromium")


def _report(tmp_path: Path, title: str = "100% of the ReLU units after `fc1` are never active"):
    finding = Finding(
        code="TD303",
        name="dead-relu",
        severity=Severity.WARNING,
        title=title,
        step=3,
        evidence={"dead": 1.0},
        where=Where(module="fc1"),
        cause="the bias starts far below zero",
        fix="initialise the bias at zero",
    )
    return Report(
        findings=[finding],
        steps=30,
        run_dir=tmp_path / "run",
        timeline=make_timeline(params=["w"], facts={"run_id": "r1"}),
    )


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(fragment: str) -> list[tuple[str, dict[str, Any]]]:
    p = _Tags()
    p.feed(fragment)
    return p.tags


# -- the report's short forms and its HTML fragment ------------------------------------------------


def test_repr_and_markdown_are_short(tmp_path):
    report = _report(tmp_path, title="a *title* with `code` and <b>")
    assert (
        repr(report)
        == f"<traindoctor Report warning · 1 finding (TD303) in 30 steps · {tmp_path}/run>"
    )
    md = report._repr_markdown_()
    assert md.startswith("**traindoctor** · warning · 1 warning in 30 steps")
    assert "- `TD303` dead-relu (warning, step 3): a \\*title\\* with `code` and \\<b\\>" in md
    assert (
        repr(Report(findings=[], steps=1)) == "<traindoctor Report healthy · 0 findings in 1 step>"
    )


def test_html_fragment_is_self_contained_and_scoped(tmp_path):
    evil = '<script>alert(1)</script>"'
    report = _report(tmp_path, title=f"title {evil}")
    fragment = report._repr_html_()
    tags = _tags(fragment)
    names = [t for t, _ in tags]
    assert names[:3] == ["div", "style", "main"]
    assert not {"script", "link", "meta", "title", "iframe", "html", "body"} & set(names)
    scope = tags[0][1]["id"]
    ids = {a["id"] for _, a in tags if a.get("id")}
    assert all(i == scope or i.startswith(scope + "-") for i in ids), ids
    for _, attrs in tags:
        if attrs.get("href") is not None:  # in-page links only, to this fragment's own ids
            assert attrs["href"].startswith("#") and attrs["href"][1:] in ids, attrs["href"]
        if attrs.get("src") is not None:
            assert attrs["src"].startswith("data:"), attrs["src"][:60]
    css = fragment.split("<style>", 1)[1].split("</style>", 1)[0]
    selectors = re.findall(r"([^{}]+)\{", css)
    assert selectors and all(
        s.strip().startswith(f"#{scope}") for sel in selectors for s in sel.split(",")
    ), selectors
    assert "TD303" in fragment and html.escape(f"title {evil}") in fragment
    assert "alert(1)</script>" not in fragment  # shown as text only
    assert str(tmp_path / "run") in fragment  # the footer names the run directory
    assert report._repr_html_().split('"', 2)[1] != scope  # each display its own ids


def test_html_fragment_without_run_dir_or_timeline_and_when_rendering_fails(monkeypatch):
    bare = Report(findings=[], steps=1)
    assert "No problems found." in bare._repr_html_()
    monkeypatch.setattr("traindoctor.report.html.render_html", lambda *a: 1 / 0)
    shown = bare._repr_html_()  # the text report and why, not a traceback in the notebook
    assert shown.startswith("<pre>") and "ZeroDivisionError" in shown


def test_scope_css_refuses_at_rules():
    with pytest.raises(ValueError, match="at-rules"):
        notebook.scope_css("@media print { body { color: red } }", "#x")


# -- a stand-in kernel ---------------------------------------------------------------------------


class ZMQInteractiveShell:  # the name is what kernel_shell() recognises
    def __init__(self) -> None:
        self.parent_header = {"msg_id": "cell-1"}
        self.execution_count = 1


class _Handle:
    def __init__(self, log: list, bundle: dict) -> None:
        self.log, self.bundle = log, bundle

    def update(self, bundle: dict, raw: bool = False) -> None:
        self.bundle = bundle
        self.log.append(("update", bundle))


@pytest.fixture
def kernel(monkeypatch):
    """A fake IPython whose get_ipython() is a kernel shell; displays are logged."""
    shell = ZMQInteractiveShell()
    log: list[tuple[str, dict]] = []

    def display(bundle: dict, raw: bool = False, display_id: Any = None) -> Any:
        assert raw
        log.append(("display", bundle))
        return _Handle(log, bundle) if display_id else None

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.setattr(notebook, "INTERVAL", 0.0)  # every step redraws: counts are exact
    return types.SimpleNamespace(shell=shell, log=log)


def _train(doc: Any, model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    for i in range(steps):
        j = i % 2 * 32
        opt.zero_grad()
        loss = F.cross_entropy(model(x[j : j + 32]), y[j : j + 32])
        loss.backward()
        opt.step()
        doc.log(loss=loss)


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def test_live_status_redraws_in_place_and_close_shows_the_report(kernel, tmp_path, capsys):
    model, opt = _model()
    with td.watch(model, opt, out_dir=tmp_path) as doc:
        _train(doc, model, opt, 12)
    kinds = [k for k, _ in kernel.log]
    # One line, redrawn in place at each step (and diagnosis pass), then the report shown.
    assert kinds == ["display"] + ["update"] * (len(kinds) - 2) + ["display"], kinds
    steps = [b["text/plain"].split(" · ")[1] for _, b in kernel.log[:-2]]
    assert steps[0] == "attached, no step yet", steps
    assert {f"step {i}" for i in range(1, 13)} <= set(steps), steps
    final = kernel.log[-2][1]
    assert final["text/plain"].startswith("traindoctor · finished · 12 steps · healthy")
    assert final["text/plain"].endswith("report below")
    shown = kernel.log[-1][1]
    assert set(shown) == {"text/plain", "text/markdown", "text/html"}
    assert 'class="badge healthy"' in shown["text/html"]
    assert capsys.readouterr().err == ""  # the inline report stands for the console summary
    report = doc.report
    # The same content as report.html (read back, not drawn twice), and as a fresh render.
    written = (report.run_dir / "report.html").read_text().split("<body><main>\n")[1]
    for fragment in (shown["text/html"], report._repr_html_()):
        scope = fragment.split('"', 2)[1]
        assert written.split("<footer>")[0] in fragment.replace(f"{scope}-", "")
    assert not report.internal_errors
    # `doc.close()` as the cell's last line: Jupyter's display of the return value is skipped...
    shown_so_far = len(kernel.log)
    report._ipython_display_()
    assert len(kernel.log) == shown_so_far
    # ... but the report is shown again in a later cell.
    kernel.shell.parent_header = {"msg_id": "cell-2"}
    report._ipython_display_()
    assert len(kernel.log) == shown_so_far + 1 and "text/html" in kernel.log[-1][1]


def test_a_loop_that_goes_on_in_a_later_cell_gets_a_new_status_line(kernel, tmp_path):
    model, opt = _model()
    doc = td.watch(model, opt, out_dir=tmp_path)
    _train(doc, model, opt, 2)
    kernel.shell.parent_header = {"msg_id": "cell-2"}
    _train(doc, model, opt, 1)
    kernel.shell.parent_header = {"msg_id": "cell-3"}
    doc.close()
    texts = [(k, b["text/plain"]) for k, b in kernel.log]
    (moved,) = [i for i, (_, t) in enumerate(texts) if t.endswith("continued in a later cell")]
    assert texts[moved][0] == "update" and texts[moved + 1][0] == "display", texts
    assert texts[moved + 1][1].startswith("traindoctor · step 3 ·")
    assert [k for k, _ in texts].count("display") == 3  # two status lines, one report
    assert texts[-2][1].endswith("report in the cell that closed the run")


def test_console_false_shows_nothing(kernel, tmp_path):
    model, opt = _model()
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        _train(doc, model, opt, 3)
    assert kernel.log == [] and doc.report is not None


def test_terminal_ipython_and_plain_python_are_unchanged(monkeypatch, tmp_path, capsys):
    class TerminalInteractiveShell:
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = TerminalInteractiveShell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert notebook.kernel_shell() is None
    monkeypatch.delitem(sys.modules, "IPython")
    model, opt = _model()
    with td.watch(model, opt, out_dir=tmp_path) as doc:
        _train(doc, model, opt, 3)
    assert "IPython" not in sys.modules  # never imported by traindoctor
    assert "traindoctor · plain · 3 steps" in capsys.readouterr().err  # the console summary
    assert not doc.report.internal_errors


# -- a real notebook -------------------------------------------------------------------------------


SETUP = """
import json, time
import torch, torch.nn as nn, torch.nn.functional as F
import traindoctor as td

class Net(nn.Module):
    def __init__(self, dead):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 3)
        if dead:
            with torch.no_grad():
                self.fc1.bias.fill_(-6.0)  # BUG: every hidden unit starts far below zero

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))

g = torch.Generator().manual_seed(0)
x, y = torch.randn(128, 8, generator=g), torch.randint(0, 3, (128,), generator=g)

def step(model, opt, i):
    j = i % 4 * 32
    opt.zero_grad()
    loss = F.cross_entropy(model(x[j : j + 32]), y[j : j + 32])
    loss.backward()
    opt.step()
    return loss
"""

BUGGY = """
torch.manual_seed(0)
model = Net(dead=True)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with td.watch(model, opt, out_dir=RUNS) as doc:
    for i in range(30):
        doc.log(loss=step(model, opt, i))
        time.sleep(0.04)  # 1.2 s at least: the status is redrawn while the loop runs
"""

HEALTHY = """
torch.manual_seed(0)
model2 = Net(dead=False)
opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
doc2 = td.watch(model2, opt2, out_dir=RUNS)
for i in range(40):
    doc2.log(loss=step(model2, opt2, i))
"""

# A finding's source line, taken in a cell: named as IPython's tracebacks name it.
WHERE = "from traindoctor._source import user_source\nprint(user_source())"

FACTS = "print(json.dumps([[r.status, [[f.code, f.title] for f in r.findings]] for r in (doc.report, doc2.report)]))"


def _kernelspec(root: Path) -> str:
    """A kernelspec that runs this interpreter (this venv's ipykernel), whatever else is
    installed as `python3` on the machine."""
    name = "traindoctor-test"
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python"})
    )
    return name


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbformat.v4 import new_code_cell, new_notebook

    root = tmp_path_factory.mktemp("notebook")
    displays: dict[int, list[str]] = {}  # cell index -> its display ids (not saved in the file)
    updates: dict[str, int] = {}  # display id -> in-place redraws

    class Client(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):
            kind, did = msg["header"]["msg_type"], msg["content"].get("transient", {})
            did = did.get("display_id") if isinstance(did, dict) else None
            if did and kind == "display_data":
                displays.setdefault(cell_index, []).append(did)
            elif did and kind == "update_display_data":
                updates[did] = updates.get(did, 0) + 1
            return super().process_message(msg, cell, cell_index)

    cells = [
        f"RUNS = {str(root / 'runs')!r}\n{SETUP}",
        BUGGY,
        "doc.report",
        HEALTHY,
        "doc2.close()",
        FACTS,
        WHERE,
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("TRAINDOCTOR_PLOTS", "1")  # the page shows the plots, as report.html does
        kernel = _kernelspec(root)
        Client(
            nb, kernel_name=kernel, timeout=180, resources={"metadata": {"path": str(root)}}
        ).execute()
    nbformat.write(nb, root / "executed.ipynb")
    return types.SimpleNamespace(nb=nb, root=root, displays=displays, updates=updates)


def _outputs(cell) -> list[dict]:
    return [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]


@pytest.mark.slow
def test_notebook_shows_live_status_then_the_report(executed):
    cells = executed.nb.cells
    (facts,) = [o for o in cells[5].outputs if o.output_type == "stream"]
    (buggy_status, buggy_findings), (healthy_status, _) = json.loads(facts.text)
    assert buggy_status != "healthy" and "TD303" in [c for c, _ in buggy_findings]
    assert healthy_status == "healthy"

    status, report = _outputs(cells[1])  # the `with` block's cell: its status, its report
    text = status.data["text/plain"]
    assert text.startswith("traindoctor · finished · 30 steps") and text.endswith("report below")
    assert "TD303 dead-relu" in text
    # Redrawn while the loop ran (1.2 s of steps, at most every 0.5 s), then once at the end.
    (did,) = executed.displays[1]
    assert executed.updates.get(did, 0) >= 2, (executed.displays, executed.updates)
    page = report.data["text/html"]
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))  # what the reader sees
    for code, title in buggy_findings:
        assert code in shown and title.replace("`", "") in shown, (code, title)
    assert report.data["text/plain"].startswith(f"<traindoctor Report {buggy_status}")
    assert page.count("data:image/png;base64,") >= 3  # the plots, inline

    (again,) = _outputs(cells[2])  # `doc.report` in a later cell: shown again
    assert "TD303" in again.data["text/html"]

    (healthy_live,) = _outputs(cells[3])  # the bare loop: a status, no report (not closed)
    assert "finished · 40 steps · healthy" in healthy_live.data["text/plain"]
    (healthy_report,) = _outputs(cells[4])  # `doc2.close()`: the report once, not twice
    assert 'class="badge healthy"' in healthy_report.data["text/html"]
    assert "healthy" in healthy_report.data["text/markdown"]
    (where,) = [o for o in cells[6].outputs if o.output_type == "stream"]
    assert where.text.strip() == "Cell In[7]:2", where.text  # not /tmp/ipykernel_<pid>/<hash>.py
    streams = [o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream"]
    assert not any("short summary" in s or "═" in s for s in streams)  # no console summary


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)"
)
def test_notebook_render_screenshot_is_not_blank(executed, tmp_path):
    from PIL import Image, ImageStat

    page = tmp_path / "notebook.html"
    page.write_text(_page(executed.nb), encoding="utf-8")
    shot = tmp_path / "notebook.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1100,2400",
                page.as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=True,
        )
    img = Image.open(shot).convert("L")
    assert img.size == (1100, 2400)
    assert ImageStat.Stat(img).var[0] > 100, "screenshot looks blank"
    if os.environ.get("TRAINDOCTOR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["TRAINDOCTOR_KEEP_SCREENSHOT"])
        shutil.copy(page, os.environ["TRAINDOCTOR_KEEP_SCREENSHOT"] + ".html")


def _page(nb) -> str:
    """The executed notebook as a page: nbconvert's HTML export where it is installed, else
    each cell's code and outputs (text/html as the notebook shows it, text in <pre>)."""
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        pass
    else:
        return HTMLExporter().from_notebook_node(nb)[0]
    parts = []
    for cell in nb.cells:
        parts.append(f"<pre class='in'>{html.escape(cell.source)}</pre>")
        for o in cell.outputs:
            data = o.get("data", {})
            if "text/html" in data:
                parts.append(f"<div class='out'>{data['text/html']}</div>")
            else:
                text = data.get("text/plain") or o.get("text", "")
                parts.append(f"<pre class='out'>{html.escape(text)}</pre>")
    style = (
        "body{font:14px sans-serif;max-width:1040px;margin:20px auto}"
        "pre{white-space:pre-wrap;overflow-wrap:anywhere}"
        "pre.in{background:#f5f5f5;border:1px solid #ddd;padding:8px}"
        ".out{margin:8px 0 24px}"
    )
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}</body></html>"
