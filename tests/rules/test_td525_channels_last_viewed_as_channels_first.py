"""TD525 channels-last-viewed-as-channels-first on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _first(shape, view_of, kind="Conv2d"):
    first = {"module": "conv1", "type": kind, "shape": shape, "view_of": view_of}
    return make_timeline(params=["conv1.weight"], steps={1: {"data.first_layer": first}})


def test_fires_on_a_reshape_of_channels_last_images():
    f = assert_fires("TD525", _first([16, 3, 32, 32], [16, 32, 32, 3]))
    assert f.where.module == "conv1" and "permute(0, 3, 1, 2)" in f.fix


def test_silent_on_channels_first_data_and_other_layers():
    assert_silent("TD525", _first([16, 3, 32, 32], None))  # no view: permuted or stored so
    assert_silent("TD525", _first([16, 3, 32, 32], [16, 3072]))  # CIFAR's flat rows
    assert_silent("TD525", _first([16, 3, 32, 32], [16, 32, 32, 3], kind="Linear"))
    assert_silent("TD525", _first([16, 16, 32, 32], [16, 32, 32, 16]))  # not image channels
