"""Seed 003's DFL clamps, the report's "fix" (probabilities clamped at 1e-6, the per-box loss
at 15): with bin 0 holding almost all the mass the clamp is active and passes no gradient
(TD301); with a normal init the same clamps are never active, cost nothing and traindoctor
stays silent. The training program is seed003.py's."""

from functools import partial

from .._base import Scenario
from .seed003 import line_of, train

SCENARIOS = (
    Scenario(
        name="seed003_dfl_clamped",
        bug="DFL probabilities clamped at 1e-6 (the report's fix) while most are below it: "
        "the clamp passes no gradient",
        train=partial(train, bug="dfl_clamped"),
        expect=("TD301",),
        top="TD301",
        where={"source": line_of("prob = bins.float().softmax(-1).clamp(min=1e-6)")},
        twin="seed003_dfl_clamp_inactive",
        steps=40,
    ),
    Scenario(
        name="seed003_dfl_clamp_inactive",
        bug="",
        train=partial(train, bug="dfl_clamp_inactive"),
        steps=40,
    ),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
