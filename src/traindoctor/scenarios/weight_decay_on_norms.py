"""TD514: SGD(model.parameters(), weight_decay=5e-3) decays the LayerNorm gains and biases too;
the gains lose a third of their norm or more in 60 steps."""

from ._base import Scenario
from ._weight_decay import train as _train


def train(steps: int = 60, watch=None):
    return _train(steps=steps, watch=watch, split=False)


SCENARIO = Scenario(
    name="weight_decay_on_norms",
    bug="weight_decay applied to every param, LayerNorm gains and biases included",
    train=train,
    expect=("TD514",),
    top="TD514",
    where={"params_prefix": "norm", "source": "_weight_decay.py"},
    twin="weight_decay_split",
    steps=60,
)

if __name__ == "__main__":
    train()
