"""TD301: an ordinal distance penalty on the argmax class, mse(logits.argmax(-1).float(), y)."""

from ._base import Scenario
from ._cuts import line_of, train_argmax


def train(steps: int = 40, watch=None):
    return train_argmax(steps=steps, watch=watch, bug=True)


SCENARIO = Scenario(
    name="argmax_selection_loss",
    bug="a distance penalty is computed on logits.argmax(-1): argmax has no gradient, so the "
    "penalty trains nothing",
    train=train,
    expect=("TD301",),
    top="TD301",
    where={"source": line_of("picked = logits.argmax(-1).float()")},
    twin="argmax_metric_only",
    steps=40,
)

if __name__ == "__main__":
    train()
