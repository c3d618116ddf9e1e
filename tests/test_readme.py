"""The README's Python examples run as written and give the results they show."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    return blocks


def _run(block: str, tmp_path, monkeypatch) -> dict:
    script = tmp_path / "example.py"
    script.write_text(block)
    monkeypatch.chdir(tmp_path)
    return runpy.run_path(str(script))


def test_readme_training_loop_example_runs(tmp_path, monkeypatch):
    ns = _run(_blocks()[0], tmp_path, monkeypatch)
    report = ns["report"]
    assert report.status == "healthy"
    assert (report.run_dir / "findings.json").is_file()


def test_readme_gradient_path_example_runs(tmp_path, monkeypatch):
    ns = _run(_blocks()[1], tmp_path, monkeypatch)
    blocking = ns["path"].blocking()
    assert [row.op for row in blocking] == ["clamp"]
    assert blocking[0].zeroed == 0.5  # "it zeroes half of the gradient", as the README says
