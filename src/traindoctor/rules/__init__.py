"""Rules judge the timeline. CATALOG is the one reviewable list of built-in rule modules."""

from __future__ import annotations

from ..errors import UsageError
from ._registry import Rule, registered
from .distributed import (
    checkpoint_written_by_every_rank,
    collective_on_some_ranks,
    data_not_sharded,
    nonfinite_on_one_rank,
    rank_desync,
    sampler_epoch_not_set,
    step_without_grad_sync,
    unused_params_ddp,
    validation_metric_not_synced,
)
from .eval_hygiene import (
    eval_mode_during_training,
    evaluated_model_frozen,
    inference_tensor_params,
    metric_stuck,
    metric_undefined,
    train_mode_during_validation,
)
from .experiments import (
    cannot_overfit_one_batch,
    experiments_not_run,
    loss_at_init_off,
    lr_probe,
    model_mixes_batch,
    output_ignores_input,
)
from .grad_flow import (
    accumulation_scaling_inconsistent,
    grads_never_zeroed,
    loss_constant,
    loss_not_decreasing,
    loss_not_differentiable,
    nothing_trainable,
    optimizer_never_steps,
    params_not_in_optimizer,
    params_not_updating,
    params_without_grad,
    stale_optimizer_params,
)
from .loss_path import dead_relu, detached_branch, gradient_blocked_by_op, saturated_activation
from .numerics import (
    amp_scaled_grads_used,
    exploding_gradient,
    fp16_without_scaler,
    grad_scaler_collapse,
    loss_component_dominates,
    loss_spike_or_divergence,
    loss_unbounded_below,
    nonfinite_activation,
    nonfinite_grad,
    nonfinite_loss,
    nonfinite_masked,
    poor_initialization,
    vanishing_gradient,
)
from .setup import (
    augmentation_repeats_across_workers,
    batches_not_shuffled,
    channels_last_viewed_as_channels_first,
    data_not_changing,
    degenerate_loss,
    frozen_module_in_train_mode,
    grad_accumulation_unnormalized,
    grad_on_non_float,
    inputs_not_normalized,
    labels_degenerate,
    log_of_nonpositive,
    logits_clamped_at_zero,
    loss_shape_broadcast,
    lr_schedule_anomaly,
    memory_growth,
    next_token_visible,
    padding_in_loss,
    plateau_mode_inverted,
    probabilities_as_logits,
    sequence_dim_is_batch,
    softmax_over_batch,
    targets_copy_inputs,
    targets_outside_output_range,
    trainable_audit,
    weight_decay_on_norms,
)

CATALOG = (
    loss_not_differentiable,  # TD101
    params_without_grad,  # TD102
    params_not_in_optimizer,  # TD103
    params_not_updating,  # TD104
    optimizer_never_steps,  # TD105
    grads_never_zeroed,  # TD106
    loss_constant,  # TD107
    loss_not_decreasing,  # TD108
    accumulation_scaling_inconsistent,  # TD109
    nothing_trainable,  # TD110
    stale_optimizer_params,  # TD111
    amp_scaled_grads_used,  # TD204
    grad_scaler_collapse,  # TD205
    exploding_gradient,  # TD206
    vanishing_gradient,  # TD207
    loss_component_dominates,  # TD208
    poor_initialization,  # TD209
    loss_spike_or_divergence,  # TD210
    nonfinite_loss,  # TD201
    nonfinite_grad,  # TD202
    nonfinite_activation,  # TD203
    nonfinite_masked,  # TD212
    loss_unbounded_below,  # TD213
    gradient_blocked_by_op,  # TD301
    detached_branch,  # TD302
    dead_relu,  # TD303
    saturated_activation,  # TD304
    inference_tensor_params,  # TD401
    eval_mode_during_training,  # TD402
    train_mode_during_validation,  # TD403
    evaluated_model_frozen,  # TD405
    metric_stuck,  # TD404
    metric_undefined,  # TD406
    grad_on_non_float,  # TD501
    trainable_audit,  # TD502
    data_not_changing,  # TD504
    inputs_not_normalized,  # TD510
    augmentation_repeats_across_workers,  # TD513
    memory_growth,  # TD505
    frozen_module_in_train_mode,  # TD516
    lr_schedule_anomaly,  # TD503
    plateau_mode_inverted,  # TD517
    padding_in_loss,  # TD518
    softmax_over_batch,  # TD519
    targets_copy_inputs,  # TD520
    logits_clamped_at_zero,  # TD521
    targets_outside_output_range,  # TD522
    sequence_dim_is_batch,  # TD523
    next_token_visible,  # TD524
    channels_last_viewed_as_channels_first,  # TD525
    weight_decay_on_norms,  # TD514
    probabilities_as_logits,  # TD506
    degenerate_loss,  # TD507
    loss_shape_broadcast,  # TD508
    log_of_nonpositive,  # TD509
    labels_degenerate,  # TD511
    batches_not_shuffled,  # TD512
    grad_accumulation_unnormalized,  # TD515
    fp16_without_scaler,  # TD211
    rank_desync,  # TD601
    nonfinite_on_one_rank,  # TD602
    unused_params_ddp,  # TD603
    data_not_sharded,  # TD604
    sampler_epoch_not_set,  # TD605
    step_without_grad_sync,  # TD606
    checkpoint_written_by_every_rank,  # TD607
    collective_on_some_ranks,  # TD608
    validation_metric_not_synced,  # TD609
    loss_at_init_off,  # TD701
    cannot_overfit_one_batch,  # TD702
    output_ignores_input,  # TD703
    model_mixes_batch,  # TD704
    experiments_not_run,  # TD705
    lr_probe,  # TD706
)


def all_rules() -> list[Rule]:
    """Every registered rule, by code: the built-in CATALOG and any registered since."""
    rules = registered()
    return [rules[c] for c in sorted(rules)]


def get_rule(code: str) -> Rule | None:
    return registered().get(code.upper())


def resolve(code: str) -> Rule:
    """Look a rule up by code or name, or raise a one-line usage error."""
    rules = all_rules()
    key = code.strip()
    for r in rules:
        if key.upper() == r.code or key.lower() == r.name:
            return r
    raise UsageError(
        f"unknown rule {code!r}: pass a code such as TD102 or a name such as "
        f"params-without-grad (`traindoctor rules` lists all {len(rules)})"
    )
