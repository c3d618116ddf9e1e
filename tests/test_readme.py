"""The README's Python example runs as written and gives the result it shows."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(script))
    report = ns["report"]
    assert report.status == "healthy"
    assert (report.run_dir / "findings.json").is_file()
