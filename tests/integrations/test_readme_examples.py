"""The README's framework examples run as written (in a temporary directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"README must hold exactly one python block with {marker!r}"
    return found[0]


@pytest.mark.parametrize(
    ("marker", "expect"),
    [
        ("trainer.fit(Classifier(), data, data)", "TD103"),
        ("# readme-example: transformers", "healthy"),
        ("# readme-example: accelerate", "LoRA adapter tensors"),
    ],
    ids=["lightning", "transformers", "accelerate"],
)
def test_framework_example_runs(marker, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block(marker), f"README[{marker}]", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    if expect is not None:
        assert expect in out, out
