"""TD513: a dataset that generates random samples from a NumPy Generator made in __init__;
with num_workers=2 each worker holds a copy of that Generator, so worker 1 yields the very
batches worker 0 yields (torch 2.13 reseeds `random`, torch and np.random per worker, not a
Generator the dataset owns)."""

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .._base import Scenario, log
from .._nets import Classifier


class RandomSamples(Dataset):
    """Procedurally generated samples: noise features, label from a fixed linear map."""

    def __init__(self, n: int = 512, dim: int = 16, classes: int = 4) -> None:
        self.n = n
        self.rng = np.random.default_rng(0)  # BUG (without worker_init_fn): copied per worker
        self.w = np.random.default_rng(1).normal(size=(dim, classes))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = self.rng.normal(size=self.w.shape[0]).astype(np.float32)
        return torch.from_numpy(x), int(np.argmax(x @ self.w))


def reseed_worker(worker_id: int) -> None:
    """A distinct stream per worker: torch's per-worker seed (different per epoch too)."""
    info = get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)


def train(steps: int = 14, watch=None, bug: bool = False):
    torch.manual_seed(0)
    loader = DataLoader(
        RandomSamples(),
        batch_size=32,
        num_workers=2,
        worker_init_fn=None if bug else reseed_worker,
    )
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    for step, (xb, yb) in enumerate(loader):
        if step >= steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="augmentation_shared_rng",
        bug="np.random.default_rng(0) made in the dataset's __init__ and 2 DataLoader workers: "
        "every batch comes twice",
        train=partial(train, bug=True),
        expect=("TD513",),
        top="TD513",
        twin="augmentation_worker_seeded",
        steps=14,
    ),
    # `worker_init_fn` reseeds the dataset's Generator from each worker's own seed.
    Scenario(name="augmentation_worker_seeded", bug="", train=train, steps=14),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
