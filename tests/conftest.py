import pytest


@pytest.fixture
def runs(tmp_path):
    """A fresh output directory for run reports."""
    return tmp_path / "runs"
