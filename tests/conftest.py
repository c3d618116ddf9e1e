import os

import pytest

# Plots cost ~0.5 s per run directory and the suite writes hundreds of them; tests/report turns
# them back on for itself (plotting is tested there, on hand-built and real timelines).
os.environ.setdefault("TRAINDOCTOR_PLOTS", "0")


@pytest.fixture
def runs(tmp_path):
    """A fresh output directory for run reports."""
    return tmp_path / "runs"
