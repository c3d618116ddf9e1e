"""Generality of the data rules (TD504, TD510-TD513): each bug planted on a model shape the
scenarios do not use (a CNN on (B, 1, 12, 12) images, a GRU over int token ids with a dict
output), beside its healthy twin, judged through td.watch / doc.log / doc.close only."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from tests.generality._shapes import (
    GRUNet,
    SmallCNN,
    assert_finds,
    assert_healthy,
    images,
    loader,
    tokens,
    watch,
)
from traindoctor.findings import Severity


def _fit(model, batches, tmp_path, loss_fn=None, steps=30, lr=3e-3):
    """Adam on `batches` (an iterator of (x, y)) for `steps` steps; cross-entropy by default."""
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    doc = watch(model, opt, tmp_path)
    for _, (x, y) in zip(range(steps), batches):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        doc.log(loss=loss)
    return doc.close()


# -- TD504 data-not-changing ------------------------------------------------------------------
def test_td504_one_batch_forever_on_a_gru_over_token_ids(tmp_path):
    t, tags = tokens()
    last = lambda out, y: F.cross_entropy(out["logits"], y[:, -1])  # noqa: E731

    def stuck(it, epoch_batches=4):
        one_epoch = [next(it) for _ in range(epoch_batches)]
        it = iter(one_epoch)
        batch = None
        while True:
            try:
                batch = next(it)
            except StopIteration:
                pass  # the bug: keeps yielding the last batch of the epoch
            yield batch

    torch.manual_seed(0)
    f = assert_finds(_fit(GRUNet(), stuck(loader(t, tags, 12)), tmp_path, last), "TD504")
    assert f.step is not None and f.step <= 6
    torch.manual_seed(0)
    assert_healthy(_fit(GRUNet(), loader(t, tags, 12), tmp_path, last))


class KeywordModel(torch.nn.Module):
    """Called the Hugging Face way: model(input_ids=..., attention_mask=...)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(30, 16)
        self.head = torch.nn.Linear(16, 6)

    def forward(self, input_ids=None, attention_mask=None):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def test_td504_batch_frozen_after_a_few_steps_on_a_keyword_called_model(tmp_path):
    t, tags = tokens()

    def run(stuck):
        torch.manual_seed(0)
        model = KeywordModel()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        doc = watch(model, opt, tmp_path)
        data = loader(t, tags[:, -1], 16)
        for i in range(30):
            if not stuck or i < 5:
                x, y = next(data)  # the bug: the loader is no longer advanced after step 5
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(input_ids=x, attention_mask=torch.ones_like(x)), y)
            loss.backward()
            opt.step()
            doc.log(loss=loss)
        return doc.close()

    f = assert_finds(run(True), "TD504")
    assert f.step == 5
    assert_healthy(run(False))


# -- TD510 inputs-not-normalized --------------------------------------------------------------
def test_td510_raw_pixels_into_a_cnn(tmp_path):
    x, y = images()
    raw = (x * 255).round()  # what a uint8 image tensor .float() gives

    torch.manual_seed(0)
    f = assert_finds(_fit(SmallCNN(), loader(raw, y, 24), tmp_path, steps=12), "TD510")
    assert f.where.module == "features.0"
    torch.manual_seed(0)
    assert_healthy(_fit(SmallCNN(), loader(raw / 255, y, 24), tmp_path, steps=12))


# -- TD511 labels-degenerate ------------------------------------------------------------------
def test_td511_one_based_labels_with_an_extra_output_on_a_gru(tmp_path):
    t, tags = tokens(classes=6)
    last = lambda out, y: F.cross_entropy(out["logits"], y[:, -1])  # noqa: E731
    torch.manual_seed(0)
    # 1..6 with 7 outputs: class 0 never used
    report = _fit(GRUNet(classes=7), loader(t, tags + 1, 16), tmp_path, last)
    f = assert_finds(report, "TD511", severities=tuple(Severity))
    assert "0" in f.title
    torch.manual_seed(0)
    assert_healthy(_fit(GRUNet(classes=6), loader(t, tags, 16), tmp_path, last))


def test_td511_every_label_identical_on_a_cnn(tmp_path):
    x, y = images(classes=5)
    torch.manual_seed(0)
    # labels read from the wrong column: every image gets class 3
    f = assert_finds(_fit(SmallCNN(5), loader(x, torch.full_like(y, 3), 20), tmp_path), "TD511")
    assert "3" in f.title
    torch.manual_seed(0)
    assert_healthy(_fit(SmallCNN(5), loader(x, y, 20), tmp_path))


# -- TD512 batches-not-shuffled ---------------------------------------------------------------
def _sorted_loader(shuffle: bool, batch: int = 16):
    x, y = images(n=384, classes=3, seed=4)
    order = torch.argsort(y, stable=True)  # stored class by class
    dataset = TensorDataset(x[order], y[order])
    g = torch.Generator().manual_seed(4)
    dl = DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=g, drop_last=True)
    while True:
        yield from dl


def test_td512_class_sorted_images_without_shuffle(tmp_path):
    torch.manual_seed(0)
    f = assert_finds(_fit(SmallCNN(3), _sorted_loader(False), tmp_path, steps=40), "TD512")
    assert f.where.source and "test_data.py" in f.where.source
    torch.manual_seed(0)
    assert_healthy(_fit(SmallCNN(3), _sorted_loader(True), tmp_path, steps=40))


# -- TD513 augmentation-repeats-across-workers ------------------------------------------------
class RandomShapes(Dataset):
    """Procedurally generated (1, 12, 12) images: a bright square at a random place on noise,
    labelled by its quadrant, all drawn from a NumPy Generator the dataset owns (made in
    __init__: each DataLoader worker gets a copy)."""

    def __init__(self, n: int = 240):
        self.n = n
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        img = self.rng.random((1, 12, 12), dtype=np.float32) * 0.3
        r, c = self.rng.integers(0, 9, size=2)
        img[:, r : r + 4, c : c + 4] += 1.0
        return torch.from_numpy(img), int(2 * (r >= 4) + (c >= 4))


def _reseed(_worker_id: int) -> None:
    info = get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)


class Stream(torch.utils.data.IterableDataset):
    """A stream of (image, label) pairs read in order; `shard` splits it between workers."""

    def __init__(self, shard: bool):
        x, y = images(n=240, classes=4, seed=6)
        self.x, self.y, self.shard = x, y, shard

    def __iter__(self):
        info = get_worker_info()
        start, step = (info.id, info.num_workers) if self.shard and info else (0, 1)
        for i in range(start, len(self.x), step):
            yield self.x[i], self.y[i]


def _workers(dataset, tmp_path, **kw):
    torch.manual_seed(0)
    dl = DataLoader(dataset, batch_size=12, num_workers=2, **kw)

    # Iterated once watched, as `for x, y in loader:` after td.watch: TD513 blames workers only
    # where it saw a DataLoader with several (a loader iterated before td.watch is not seen).
    def batches():  # (a generator expression would call iter(dl) at once)
        yield from dl

    return _fit(SmallCNN(4), batches(), tmp_path, steps=16)


def test_td513_generated_images_from_a_generator_copied_into_workers(tmp_path):
    f = assert_finds(_workers(RandomShapes(), tmp_path), "TD513")
    assert f.evidence["estimated_workers"] == 2 and f.evidence["lag"] == 1
    assert_healthy(_workers(RandomShapes(), tmp_path, worker_init_fn=_reseed))


def test_td513_iterable_dataset_not_split_between_workers(tmp_path):
    """Every worker iterates the whole IterableDataset: each batch arrives twice (A A B B)."""
    f = assert_finds(_workers(Stream(shard=False), tmp_path), "TD513")
    assert "IterableDataset" in f.cause
    assert_healthy(_workers(Stream(shard=True), tmp_path))
