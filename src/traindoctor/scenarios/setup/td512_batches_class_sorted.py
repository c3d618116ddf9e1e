"""TD512: the dataset is sorted by class and the loader does not shuffle: batch after batch
holds a single class, in runs of four."""

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .._base import Scenario, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 48, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=31)
    order = torch.argsort(y, stable=True)  # the files come grouped by class
    dataset = TensorDataset(x[order], y[order])
    g = torch.Generator().manual_seed(31)
    loader = DataLoader(dataset, batch_size=32, shuffle=not bug, generator=g)  # BUG: no shuffle
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    done = 0
    while done < steps:
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            log(doc, loss=loss)
            done += 1
            if done == steps:
                break
    return model


SCENARIOS = (
    Scenario(
        name="batches_class_sorted",
        bug="class-sorted dataset, DataLoader(shuffle=False): single-class batches in runs",
        train=partial(train, bug=True),
        expect=("TD512",),
        top="TD512",
        where={"source": line_in(__file__, "loss = F.cross_entropy(model(xb), yb)")},
        twin="batches_shuffled",
        steps=48,
    ),
    # The same class-sorted dataset, shuffled by the loader.
    Scenario(name="batches_shuffled", bug="", train=train, steps=48),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
