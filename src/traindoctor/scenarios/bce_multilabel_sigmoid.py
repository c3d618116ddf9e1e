"""TD506: sigmoid outputs fed to BCE-with-logits, which applies its own sigmoid: every tag's
probability is squeezed into [0.5, 0.73] and the loss has a floor."""

from ._base import Scenario
from ._multilabel import line_of
from ._multilabel import train as _train


def train(steps: int = 48, watch=None):
    return _train(steps=steps, watch=watch, bug="sigmoid")


SCENARIO = Scenario(
    name="bce_multilabel_sigmoid",
    bug="sigmoid outputs fed to binary_cross_entropy_with_logits (a second sigmoid inside)",
    train=train,
    steps=48,
    expect=("TD506",),
    top="TD506",
    where={"source": line_of("multi-label: several tags on")},
    twin="bce_multilabel_logits",
)

if __name__ == "__main__":
    train()
