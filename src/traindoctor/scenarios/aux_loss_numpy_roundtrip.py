"""TD302: a confidence penalty computed on a numpy round-trip of the probabilities."""

from ._base import Scenario
from ._cuts import line_of, train_numpy


def train(steps: int = 40, watch=None):
    return train_numpy(steps=steps, watch=watch, bug=True)


SCENARIO = Scenario(
    name="aux_loss_numpy_roundtrip",
    bug="the confidence penalty is computed from torch.from_numpy(p.detach().cpu().numpy()): "
    "it is in the loss but trains nothing",
    train=train,
    expect=("TD302",),
    top="TD302",
    where={"source": line_of("loss = ce + conf")},
    twin="aux_loss_in_torch",
    steps=40,
)

if __name__ == "__main__":
    train()
