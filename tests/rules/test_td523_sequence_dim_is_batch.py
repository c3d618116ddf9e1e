"""TD523 on hand-built timelines: a sequence-first layer's input shape against the loss's."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(layer_shape, loss_shape, cls="LSTM"):
    events = [
        {"kind": "seq_layer_call", "step": 1, "module": "lstm", "cls": cls, "shape": layer_shape},
        {
            "kind": "loss_input",
            "step": 1,
            "site": 0,
            "fn": "cross_entropy",
            "input_shape": loss_shape,
            "source": "train.py:30",
            "producer": ["AddmmBackward0"],
        },
    ]
    return make_timeline(params=["w"], steps={1: {}}, events=events)


def test_fires_when_the_loss_predicts_one_row_per_index_of_the_layers_time():
    f = assert_fires("TD523", _tl([100, 28, 28], [100, 10]))
    assert f.where.module == "lstm" and "time=100, batch=28" in f.title
    assert_fires("TD523", _tl([64, 12, 32], [64], cls="MultiheadAttention"))


def test_silent_on_sequence_first_models_and_ambiguous_shapes():
    assert_silent("TD523", _tl([28, 100, 28], [100, 10]))  # (T, B, F): one row per example
    assert_silent("TD523", _tl([35, 20, 64], [700, 50]))  # a seq-first LM, flattened tokens
    assert_silent("TD523", _tl([35, 20, 64], [35, 20]))  # per-step predictions (T, B)
    assert_silent("TD523", _tl([32, 32, 16], [32, 10]))  # batch size = sequence length
    assert_silent("TD523", _tl([64, 1, 16], [64, 10]))  # over the batch on purpose (B = 1)
