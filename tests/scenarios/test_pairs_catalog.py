"""The bundled scenarios as a catalog of buggy/healthy pairs, kept by rule family (issue 14:
"a rule's parts within reach"). Static: reads the scenarios' metadata, trains nothing.

- every rule of severity warning or error has a buggy scenario where it is the top finding,
  with a healthy twin (the rules that have none are listed below, each with its reason);
- a pair is one training function with a `bug` flag: the buggy scenario and its twin run the
  same function;
- a scenario module lives in the folder of its rule family and its file name starts with the
  code(s) it plants (`grad_flow/td106_...py`); healthy-only modules are named `healthy_...`.
"""

from __future__ import annotations

import functools
import re

import pytest

from traindoctor.findings import Severity
from traindoctor.rules._registry import all_rules
from traindoctor.scenarios import FAMILIES, all_scenarios, scenario_modules

FAMILY_OF_DIGIT = {
    "1": "grad_flow",
    "2": "numerics",
    "3": "loss_path",
    "4": "eval_hygiene",
    "5": "setup",
}
# Warning/error rules with no buggy scenario where they are the top finding, and why. This list
# may only shrink: an entry whose rule gets such a scenario fails the test until removed.
NO_PAIR = {
    # Fires on the same divergence as TD206 (lr_too_large expects both); the exploding gradient
    # is the root cause and ranks first, so TD210 is never the top finding of a planted bug.
    "TD210": "always ranked after TD206 on the divergence it reports",
}
# Flat top-level scenario modules not yet moved into a family folder. May only shrink (the
# scenarios/ reorganisation of issue 14 point 4 empties it); no new flat module may appear.
FLAT_LEFT: frozenset[str] = frozenset(
    {
        "accum_loss_divided",
        "accum_loss_not_divided",
        "argmax_metric_only",
        "argmax_selection_loss",
        "augmentation_shared_rng",
        "augmentation_worker_seeded",
        "aux_loss_in_torch",
        "aux_loss_no_grad",
        "aux_loss_numpy_roundtrip",
        "aux_loss_with_grad",
        "batches_class_sorted",
        "batches_shuffled",
        "bce_multilabel_logits",
        "bce_multilabel_sigmoid",
        "data_fresh_batches",
        "data_same_batch",
        "ema_never_updated",
        "ema_updated",
        "frozen_bn_backbone_eval",
        "frozen_bn_backbone_train_mode",
        "frozen_dropout_eval",
        "frozen_dropout_train_mode",
        "gru_learned_start_state",
        "gru_probability_clamped",
        "inputs_raw_units",
        "inputs_standardized",
        "inputs_token_ids",
        "labels_one_based",
        "labels_zero_based",
        "logging_bugs_only",
        "loss_bce_single_logit",
        "loss_ce_seq_reshape",
        "loss_ce_seq_transpose",
        "loss_ce_single_logit",
        "loss_double_softmax",
        "loss_log_softmax_batch_dim",
        "loss_log_softmax_class_dim",
        "loss_logged_item",
        "loss_logits_smoothing_distill",
        "loss_mse_broadcast",
        "loss_mse_shapes_match",
        "loss_nll_log_relu",
        "loss_nll_log_softmax",
        "loss_nll_softmax",
        "loss_total_detached",
        "loss_total_keeps_graph",
        "loss_total_per_epoch",
        "loss_total_per_epoch_item",
        "lr_cosine_epochs_per_batch",
        "lr_epoch_sched_per_epoch",
        "lr_epoch_sched_per_micro_batch",
        "lr_multistep_epochs_per_batch",
        "lr_onecycle_per_batch",
        "lr_sched_skips_guarded",
        "lr_sched_steps_on_amp_skips",
        "lr_warmup_cosine_per_batch",
        "relu_bias_default",
        "relu_bias_shifted",
        "seed000_metrics_fresh_attribute",
        "seed000_metrics_stale_attribute",
        "seed000_validator_copies",
        "seed000_validator_eval_left",
        "seed000_validator_fuses",
        "seed000_validator_fuses_silently",
        "seed001_clamp_saturates",
        "seed001_detached",
        "seed001_healthy",
        "seed001_where_constant",
        "seed003_dfl_clamp_inactive",
        "seed003_dfl_clamped",
        "seed004_auroc_one_class",
        "seed004_auroc_two_classes",
        "seed004_lora_trainable",
        "seed004_requires_grad_quantized",
        "tanh_inputs_scaled",
        "tanh_inputs_unscaled",
        "validation_without_eval",
        "weight_decay_on_norms",
        "weight_decay_split",
    }
)

PACKAGE = "traindoctor.scenarios"
MODULES = scenario_modules()
SCENARIOS = all_scenarios()
BY_NAME = {s.name: s for s in SCENARIOS}
RULES = all_rules()
JUDGED = [r for r in RULES if r.severity in (Severity.WARNING, Severity.ERROR)]


def _function(train):
    """The training function behind a scenario's `train` (a `partial` that sets `bug`)."""
    while isinstance(train, functools.partial):
        train = train.func
    return train


def _paired_tops() -> set[str]:
    tops = set()
    for s in SCENARIOS:
        twin = BY_NAME.get(s.twin or "")
        if not s.healthy and twin is not None and twin.healthy:
            tops.add(s.top)
    return tops


@pytest.mark.parametrize("rule", JUDGED, ids=lambda r: r.code)
def test_every_warning_or_error_rule_has_a_pair_where_it_is_top(rule):
    paired = rule.code in _paired_tops()
    if rule.code in NO_PAIR:
        assert not paired, f"{rule.code} now has a pair: remove it from NO_PAIR"
    else:
        assert paired, (
            f"{rule.code} ({rule.name}) has no buggy scenario with top={rule.code!r} and a "
            "healthy twin: add one to scenarios/, or to NO_PAIR with the reason"
        )


def test_no_pair_allowlist_names_warning_or_error_rules():
    assert set(NO_PAIR) <= {r.code for r in JUDGED}


def test_scenario_names_are_unique():
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if not s.healthy], ids=lambda s: s.name)
def test_buggy_scenario_and_its_twin_run_one_function(scenario):
    module = _module_of(scenario)
    if module.rsplit(".", 1)[-1] in FLAT_LEFT:
        pytest.skip(f"{module} is still flat (FLAT_LEFT)")
    twin = BY_NAME[scenario.twin]
    assert _function(scenario.train) is _function(twin.train), (
        f"{scenario.name} and its twin {twin.name} should be one train(..., bug=...)"
    )


def test_no_new_flat_scenario_module():
    flat = {name.rsplit(".", 1)[-1] for name, _ in MODULES if name.count(".") == 2}
    assert flat <= FLAT_LEFT, (
        f"scenario modules outside a family folder: {sorted(flat - FLAT_LEFT)}"
    )


@pytest.mark.parametrize(
    "module, scenarios",
    [m for m in MODULES if m[0].count(".") == 3],
    ids=[m[0].removeprefix(f"{PACKAGE}.") for m in MODULES if m[0].count(".") == 3],
)
def test_module_lives_in_its_family_folder_named_by_code(module, scenarios):
    folder, filename = module.split(".")[-2:]
    assert folder in FAMILIES
    if folder == "seeds":  # a seed report's bugs span families: one module per report
        assert filename.startswith("seed"), module
        return
    tops = {s.top for s in scenarios if not s.healthy}
    prefix = re.match(r"(?:td\d{3}_)*", filename).group(0)
    codes = {c.upper() for c in re.findall(r"td\d{3}", prefix)}
    if not tops:
        assert filename.startswith("healthy_"), f"{module}: a healthy-only module is healthy_..."
        return
    assert prefix, f"{module}: the file name starts with the code it plants (td1xx_...)"
    assert codes == tops, f"{module}: named after {sorted(codes)}, plants {sorted(tops)}"
    wrong = {t for t in tops if FAMILY_OF_DIGIT[t[2]] != folder}
    assert not wrong, f"{module}: {sorted(wrong)} belong in {FAMILY_OF_DIGIT[min(wrong)[2]]}/"


def _module_of(scenario) -> str:
    for name, scenarios in MODULES:
        if any(s is scenario for s in scenarios):
            return name
    raise LookupError(scenario.name)
