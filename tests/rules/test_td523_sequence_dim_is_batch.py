"""TD523 on hand-built timelines: a sequence-first layer's input shape against the loss's."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(layer_shape, loss_shape, cls="LSTM", lead="A", loss_step=1):
    lead = layer_shape[0] if lead == "A" else lead  # the watched model's input's leading size
    call = {"kind": "seq_layer_call", "step": 1, "module": "lstm", "cls": cls}
    call.update(shape=layer_shape, model_input_rank=3, model_input_lead=lead)
    events = [
        call,
        {
            "kind": "loss_input",
            "step": loss_step,
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


def test_silent_when_the_models_input_leads_with_the_layers_batch():
    # DETR: B=2 images, 10 object queries read as (10, 2, D); 2 x 5 matched boxes (10, 4)
    assert_silent("TD523", _tl([10, 2, 32], [10, 4], cls="MultiheadAttention", lead=2))
    assert_silent("TD523", _tl([100, 28, 28], [100, 10], lead=None))  # model input not seen


def test_a_prediction_is_compared_with_the_layer_input_of_its_own_step():
    # batch size = sequence length = 32, the last batch 20: (32, 20, F) is seen at a later
    # step than the full batch's (32, C) prediction
    assert_silent("TD523", _tl([32, 20, 16], [32, 10], loss_step=2))
