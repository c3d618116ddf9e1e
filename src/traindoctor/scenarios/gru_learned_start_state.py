"""Healthy: makemore's hand-written GRU with a learned start state, zeros at init. At t=0 the
multiplies by the zero state pass exactly 0 to the gates, until the state's first update: a
transient zero of a trained operand, not a blocked gradient (TD301 stays silent)."""

from ._base import Scenario
from ._learned_start import train as _train


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, clamp=False)


SCENARIO = Scenario(name="gru_learned_start_state", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()
