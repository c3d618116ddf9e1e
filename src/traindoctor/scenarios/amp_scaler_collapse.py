"""A gate `where(h > 0, h.sqrt(), 0)` gives `stem` a NaN gradient at every scale: the GradScaler
skips every step and its scale halves each time (growth_interval=1), toward 0."""

from ._amp import train as _train
from ._base import Scenario


def train(steps: int = 40, watch=None):
    return _train(steps=steps, watch=watch, bug="nan_gate")


SCENARIO = Scenario(
    name="amp_scaler_collapse",
    bug="NaN gradient in `stem` (sqrt in the unselected branch of torch.where): every step skipped",
    train=train,
    expect=("TD205",),
    top="TD205",
    where={"module": "stem", "params_prefix": "stem.", "source": "_amp.py:"},
    twin="amp_sqrt_safe",
    steps=40,
)

if __name__ == "__main__":
    train()
