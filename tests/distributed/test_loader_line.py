"""distributed/loader_line.py: the line that built the DataLoader a training loop iterates, read
from the source around the loop (TD604's line); nothing where the loop iterates anything else."""

from __future__ import annotations

import textwrap

from traindoctor.distributed.loader_line import built_at

SCRIPT = textwrap.dedent(
    """
    from torch.utils.data import DataLoader

    def train(data, val):
        loader = DataLoader(data, batch_size=4, shuffle=True)
        val_loader = DataLoader(val)
        for epoch in range(3):
            for i, (x, y) in enumerate(loader):
                step(x, y)
        for x in val_loader:
            pass

    class Trainer:
        def fit(self):
            self.train_loader = torch.utils.data.DataLoader(self.data)
            for x, y in tqdm(self.train_loader):
                step(x, y)

    def plain(batches):
        for x, y in batches:
            step(x, y)
    """
)


def _line(path, text):
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if text in ln)


def test_the_loop_around_the_line_names_its_loader(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    found = built_at(str(path), _line(path, "step(x, y)"))
    assert found is not None
    assert found["built"].endswith(f":{_line(path, 'loader = DataLoader(data')}")
    assert found["iterated"].endswith(f":{_line(path, 'enumerate(loader)')}")


def test_an_attribute_inside_tqdm(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    found = built_at(str(path), _line(path, "tqdm(self.train_loader)") + 1)
    assert found is not None and found["built"].endswith(
        f":{_line(path, 'self.train_loader = torch')}"
    )


def test_a_loop_over_anything_else_names_nothing(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    assert built_at(str(path), _line(path, "for x, y in batches") + 1) is None
    assert built_at(str(tmp_path / "missing.py"), 3) is None
