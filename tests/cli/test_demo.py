"""`traindoctor demo` judges a buggy scenario by its rule first (info-level rules included) and a
healthy twin by the absence of errors and warnings; it returns how many missed."""

from __future__ import annotations

from traindoctor.scenarios.demo import run_demo


def test_demo_counts_a_buggy_scenario_with_an_info_rule_and_its_twin(tmp_path):
    # labels_one_based's TD511 is info by design (healthy token models look the same).
    assert run_demo(out_dir=str(tmp_path), only=["labels_one_based", "labels_zero_based"]) == 0
