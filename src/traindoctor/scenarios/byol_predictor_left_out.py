"""TD103: a BYOL loop whose optimizer holds the encoder only; the predictor never trains (the EMA
target encoder is out of the optimizer on purpose and must not be reported)."""

from ._base import Scenario
from ._byol import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="predictor_left_out")


SCENARIO = Scenario(
    name="byol_predictor_left_out",
    bug="optimizer = SGD(model.encoder.parameters()): the predictor is in no param group",
    train=train,
    expect=("TD103",),
    top="TD103",
    where={"source": "_byol.py"},
    twin="byol_ema_target",
    steps=40,
)

if __name__ == "__main__":
    train()
