"""The probe -> rule contract in one place: every per-step signal, event kind and fact key.

A probe writes three things into the timeline (timeline.py): per-step *signals*
(`rec.record(step, "grads.norm", ...)`), one-off *events* (`rec.event(step, "hand_step",
source=...)`) and static run *facts* (`timeline.facts["params"] = ...`). Each is declared here
with a one-line meaning; events with a `TypedDict` of their payload and facts with their type.
Rules declare what they read (`@rule(requires=..., events=..., facts=...)`), probes what they
write (`Probe.provides`, `provides_events`, `provides_facts`), and tests/test_catalog.py checks
both against this module. Writers that are not probes (the Doctor, integrations) are named
in `writers=`.

The names are the on-disk timeline.jsonl format: never rename one (old runs must still load
with `traindoctor report --rediagnose`); add a new name instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

# -- signals ------------------------------------------------------------------------------

SIGNALS: dict[str, str] = {}
"""Every signal name a probe may record, with its meaning (per-step values, keyed by param or
module path where it says "per ...")."""

#: Signals that are a family of names: `metric.<name>` belongs to the signal `metric`.
SIGNAL_FAMILIES = ("metric",)


def _signal(name: str, meaning: str) -> None:
    SIGNALS[name] = meaning


def signal_of(name: str) -> str:
    """The declared signal a recorded name belongs to (`metric.acc` -> `metric`)."""
    head = name.split(".", 1)[0]
    return head if head in SIGNAL_FAMILIES and name != head else name


_signal(
    "activations.sites",
    "per sampled step: {layer: {op, kind, module_type, units, window}} activation calls seen",
)
_signal(
    "activations.dead",
    "per sampled step: {layer: fraction of ReLU units never active over the window}",
)
_signal(
    "activations.saturated",
    "per sampled step: {layer: fraction of tanh/sigmoid units saturated in every step of the "
    "window}",
)
_signal("activations.pre_mean", "per sampled step: {layer: mean pre-activation}")
_signal("activations.pre_std", "per sampled step: {layer: std of the pre-activation}")
_signal(
    "activations.bias_mean",
    "per sampled step: {layer: mean bias of the module producing the pre-activation}",
)
_signal("activations.input_std", "per sampled step: std of the model's input batch")
_signal("amp.scale", "GradScaler scale at the end of the step")
_signal("amp.skipped", "1 when the GradScaler skipped optimizer.step() in this step")
_signal(
    "amp.misuse",
    "per misuse key ('clip_grad_norm_@train.py:40'): times in the step gradients were used "
    "while still multiplied by the GradScaler scale (see the amp_misuse events)",
)
_signal(
    "amp.misuse.norm",
    "per misuse key: the scaled gradient size seen then (clip_grad_norm_'s total norm, the "
    "max |grad| for clip_grad_value_, the total norm stepped by a direct optimizer.step())",
)
_signal("amp.misuse.scale", "per misuse key: the GradScaler scale at that moment")
_signal(
    "amp.nonfinite",
    "per param, on skipped steps where it was measured: 1 if its gradient held inf/NaN at unscale_",
)
_signal("copies.norm", "per param that no optimizer holds: ||θ|| on sampled steps (before step())")
_signal(
    "copies.evaluated",
    "per evaluation of an unwatched copy (zero-code): {copy: ||θ_copy||, '<trained>': ||θ||} "
    "summed norms, at the step it ran",
)
_signal(
    "data.inputs",
    "per input key ('in0', model prefix first): {dtype, shape, float}; recorded when it changes",
)
_signal(
    "data.fp",
    "per step: {'<key>.sum|sumsq|wsum|min|max': value} fingerprint of the step's first batch",
)
_signal(
    "data.samples",
    "per step (first SAMPLE_STEPS steps): one fingerprint per sample of the first batched input",
)
_signal(
    "data.eval_fp",
    "per step: {'<key>@<n>.sum|sumsq|wsum|min|max': value} fingerprint of the first input of "
    "the n-th forward outside training whose input has the training input's shape and dtype "
    "(at most MAX_EVAL_FP in a run)",
)
_signal(
    "data.first_layer",
    "per structural step: {module, type, next, dtype, shape, view_of} of the first module with "
    "params to run (view_of: the shape of the tensor its input is a contiguous view of)",
)
_signal(
    "data.first_stats",
    "per structural step: {in_mean, in_std, in_min, in_max, out_std} of the first layer",
)
_signal(
    "forward.calls",
    "per module: {calls, grad_enabled, output_requires_grad, source} on structural steps",
)
_signal(
    "gradpath.parts_detached",
    "per step: {'detached': [part names without graph], 'with_graph': [names]} from doc.log",
)
_signal("grads.none", "trainable params whose .grad is None when step() runs")
_signal("grads.cleared", "params that received a gradient in backward but had none at step()")
_signal("grads.norm", "per param: ||grad|| when step() runs (after unscale)")
_signal(
    "grads.carried",
    "per param: the smallest ||grad|| already in .grad before a backward of the step (0 when "
    "it was zeroed or None before one of them; a param of the params inventory that the "
    "record leaves out is 0)",
)
_signal("grads.stepped", "params held by an optimizer whose step() ran in the step (sampled steps)")
_signal(
    "grads.cycle_carried",
    "per param of a watched optimizer other than the first: the smallest ||grad|| before a "
    "backward of one whole cycle of that optimizer (from right after one step() to the next; "
    "0 when it was zeroed or None before one of them), at the step the cycle ended",
)
_signal("grads.observed", "1 on steps where the gradient probe looked")
_signal("init.ce_loss", "per call index: cross_entropy value on structural steps")
_signal("init.ce_classes", "per call index: number of classes C of that call")
_signal(
    "init.ce_uniform",
    "per call index: the cross-entropy of the same logits against a uniformly random target "
    "(mean over rows of logsumexp(z) - mean(z)), on structural steps",
)
_signal(
    "init.ce_cosine",
    "per call index, step 1: the scale s of logits that are cosines times constants (the graph "
    "down to normalized operands, their norms measured; _scaled_cosine.py); absent otherwise",
)
_signal("init.in_std", "per leaf module: std of its input on structural steps")
_signal("init.out_std", "per leaf module: std of its output on structural steps")
_signal(
    "loss.parts_grad",
    "per step: {part name: ||d part / d shared params||} on measured steps (sampled)",
)
_signal("loss.backward", "per step: list of backward-root values, scaler removed")
_signal(
    "loss.factor", "per step: list of constant factors (e.g. 1/accum) applied just before backward"
)
_signal("loss.site", "per step: list of call-site ids (event backward_site) of each backward pass")
_signal("loss.train", "per step: list of losses logged with doc.log(loss=...)")
_signal("loss.val", "per step: list of losses logged inside doc.validating()")
_signal("backward.count", "backward passes in the step")
_signal("loss.parts", "per step: {part name: value} of doc.log(parts=...)")
_signal("metric", "prefix: metric.<name> holds values logged with doc.log(<name>=...)")
_signal(
    "loss_inputs.stats",
    "per step: {'<site>.<stat>': value} device facts of each loss call site on observed steps "
    "(in_min, in_max, rowsum_dev, lse_dev, nonfinite, clamped, t_min, t_max, t_mean, "
    "t_ms, log_arg_nonpos, n_valid, own_argmax/own_n/own_plain, ids_offset, ids_next_t, nt_share/nt_dep/nt_dim/nt_rows/nt_attn, pad_val/pad_rows/pad_share/pad_inner/pad_rmin/pad_rmax, "
    "lnorm<d>/pnorm<d>/tnorm<d>, clamp_zero/clamp_rows/clamp_tgt, rng_out/rng_floor/rng_base, "
    "loss); sites are described by "
    "`loss_input` events",
)
_signal(
    "loss_inputs.labels",
    "per step: {'<site>.<class>': count} label histogram of class-index targets (<= 64 classes)",
)
_signal(
    "loss_inputs.top_label",
    "per step: {'<site>.top': class, '<site>.top_n': its count, '<site>.n': labels} of "
    "class-index targets over more than 64 classes (the batch's most frequent class)",
)
_signal("loss_inputs.observed", "per step: list of loss sites whose inputs were measured")
_signal(
    "memory.graphs_alive",
    "per observed step: {'alive': graphs of steps before the previous one still alive, "
    "'dead': such graphs seen freed, 'oldest': step of the oldest alive, 'capped': bool}",
)
_signal("memory.host_rss_mb", "per observed step: process resident memory, MiB")
_signal("memory.cuda_allocated_mb", "per observed step: torch.cuda.memory_allocated(), MiB")
_signal(
    "eval.run",
    "per step: list of one summary per evaluate() call: batches, samples, task, target and "
    "prediction class counts, the values computed and logged",
)
_signal(
    "eval.undefined",
    "per step: list of metrics evaluate() found undefined (metric, class, reason, counts)",
)
_signal(
    "modes.eval_at_step",
    "per step where it changed: {'eval': [mode-sensitive modules in eval mode at the "
    "optimizer step], 'count': n, 'roots_training': {model: bool}}",
)
_signal(
    "modes.validated_fingerprint",
    "per validation (appended): per-param norms of the model doc.validating() evaluates",
)
_signal(
    "modes.trained_fingerprint",
    "per validation (appended): per-param norms of the watched (trained) models at that moment",
)
_signal(
    "modes.functional_dropout",
    "per step where it changed: {'on': n, 'off': n, 'roots_training': {model: bool}} calls of "
    "F.dropout (p > 0, outside nn.Dropout) in the step's training forwards by their "
    "`training` argument, and the watched models' mode at the optimizer step",
)
_signal(
    "modes.frozen_bn_drift",
    "per observed step: {BatchNorm inside a frozen module: relative change of its running "
    "mean/var since the previous observed step}",
)
_signal(
    "modes.frozen_params_moved",
    "per observed step: {frozen module with BatchNorm: relative change of its sampled "
    "parameters (its BatchNorms' affine ones, else its first) since the previous observed step}",
)
_signal(
    "numerics.checked",
    "per step: {loss: bool, grads: bool} which finiteness checks ran before step() (1 = all "
    "finite)",
)
_signal("numerics.nonfinite", "per step: what was non-finite: subset of loss, grads, activations")
_signal("optim.lr", "per param group ('opt0/group0'): learning rate at the step")
_signal(
    "optim.step",
    "1 when the primary optimizer's step() ran in this step, or a hand-written update of the "
    "trained params (no torch optimizer) closed it",
)
_signal(
    "optim.evaluations",
    "closure evaluations (backward passes) inside one optimizer.step(closure), when more than "
    "one (L-BFGS's line search): the first is the step's backward and loss, the others trials",
)
_signal("optim.hand_step", "1 when a hand-written update of the trained params closed the step")
_signal(
    "optim.any_step",
    "number of step() calls of any watched optimizer in this step (a GAN's, layer-wise "
    "optimizers': the step clock follows the primary one only)",
)
_signal(
    "params.update",
    "per param: ||θ_after - θ_before|| over one optimizer step (or hand-written update)",
)
_signal("params.norm", "per param: ||θ|| before the step")
_signal("params.replaced", "names whose tensor is no longer the one seen at attach")
_signal(
    "schedule.steps",
    "per scheduler ('sched0', see the lr_scheduler events): scheduler.step() calls in the step",
)
_signal(
    "schedule.plateau",
    "per ReduceLROnPlateau ('sched0'): [metric given to step(), lr before, lr after] "
    "(first param group)",
)
_signal(
    "schedule.autocast",
    "per device type: the autocast dtype in force at a watched model's forward ('off' if none)",
)
_signal(
    "schedule.grad_nonzero",
    "per param: non-zero gradient elements at step() (float16 autocast without a GradScaler)",
)
_signal(
    "schedule.clip_norm", "per step: list of total norms clip_grad_norm_ measured before clipping"
)
_signal("schedule.clip_max", "per step: list of clip_grad_norm_'s max_norm")
_signal(
    "schedule.tensor_divided",
    "per step: backward passes whose loss ends in a division by a tensor (data normalizer)",
)
_signal(
    "work.counted", "first training step: {modules, tensors, elements, activations, flops, device}"
)


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One declared event kind or fact key."""

    name: str
    meaning: str
    type: Any  # events: the payload's TypedDict; facts: the value's type
    #: writers other than probes (which declare theirs in `provides_events/_facts`)
    writers: tuple[str, ...] = ()


class Event(TypedDict):
    """What every event holds: `Timeline.event(step, kind, **payload)` adds both."""

    step: int
    kind: str


class Source(Event, total=False):
    source: str | None  # "path:line" of the user's code
    code: str | None  # that line's text


class AmpMisuse(Event, total=False):
    key: str  # "<what>@<source>", the key of the amp.misuse signals
    what: str  # clip_grad_norm_, clip_grad_value_, step, ...
    source: str | None
    optimizer: str | None  # "opt0"
    optimizer_class: str | None
    params: list[str]
    stage: str  # the GradScaler's stage for that optimizer: UNSCALED, READY, ...
    unscale_source: str | None
    threshold: float | None


class Audit(Event, total=False):
    params: int
    trainable: int
    lora: int
    quantized: int


class BackwardCall(Source, total=False):
    factor: float  # constant factor applied to the loss just before backward (1/accum)
    backward_index: int


class BackwardSite(Event, total=False):
    site: int  # the id used by the loss.site signal
    source: str | None


class CrossEntropyCall(Event, total=False):
    classes: int
    source: str | None


class CosineLogits(Event, total=False):
    scale: float
    params: list[str]


class DataBaseInEval(Event, total=False):
    rows: list[dict[str, Any]]


class DataForward(Event, total=False):
    prefix: str
    source: str | None


class DataLoader(Event, total=False):
    name: str  # the variable that holds it in the user's code
    batch_size: int | None
    dataset_len: int | None
    dataset_type: str
    batches: int | None  # len(loader): batches an epoch as its sampler counts them
    sampler: str | None
    num_workers: int
    worker_init_fn: bool
    drop_last: bool
    generators: list[dict[str, Any]]  # {path, kind, used_in} of each RNG the data set holds


class FinalLayers(Event, total=False):
    modules: list[str]
    params: list[str]


class FrozenModules(Event, total=False):
    modules: dict[str, Any]  # frozen module -> {train-mode BN/dropout inside, ...}


# Functional form: the payload has a `class` key (the param's class name).
GradOnNonFloat = TypedDict(
    "GradOnNonFloat",
    {
        "step": int,
        "kind": str,
        "param": "str | None",
        "component": "str | None",
        "dtype": str,
        "class": str,
        "shape": "list[int]",
        "via": str,  # requires_grad_, requires_grad =, ...
        "error": str,
        "source": "str | None",
        "code": "str | None",
        "attached": bool,
        "count": int,
    },
    total=False,
)


class GradientCut(Event, total=False):
    cut: str  # item, numpy, detach, ...
    cut_op: str
    cut_at: str | None
    cut_code: str
    numpy: bool
    # "term" (in the loss), "part" (a logged loss part), or "constant" (cut "constant": a
    # Python number added to the loss at added_at, not a cut; TD302 skips that add)
    found: str
    added_at: str | None
    part: str | None


class GradientPath(Event, total=False):
    nodes_walked: int
    # The loss read as `+ (selected score - logsumexp)` or `+ log_softmax[label]` (a
    # log-likelihood minimized, _loglik.py): {form, at, score_at, visited}; None otherwise
    log_likelihood: dict[str, Any] | None
    # Loss terms whose graph reaches leaves that require grad but no trained param while
    # another term reaches them (_reach.py): [{op, source}]
    unreached_terms: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    nodes_measured: int
    lines_known: bool
    reference_grad: float | None
    seconds: float
    truncated: bool


class GraphHolder(Source, total=False):
    loss_step: int
    op: str


class GraphRetained(Event, total=False):
    alive: int
    backward_reaches: list[int]
    reaches_count: int
    walk_complete: bool
    nodes_walked: int
    backward_source: str | None


class IdleBackward(Event, total=False):
    backward_since_step: int  # backward passes since the last step, this one included
    fed: int  # watched trained params this backward gave a gradient
    trained: int  # watched params that require grad
    training: bool  # whether any watched model was in training mode
    input_grads: int  # graph leaves that require grad and are no parameter (inputs)


class ProbesPaused(Event, total=False):
    backward_since_step: int  # backward passes since the last step when the probes paused


class HandStep(Event, total=False):
    source: str | None  # the `p.data` write; None for `p -= ...` under no_grad
    params: int


class InferenceTensors(Event, total=False):
    params: list[str]
    buffers: list[str]
    count: int
    found_at: str
    in_optimizer: bool
    region_source: str | None
    region_step: int | None


class IntegrationNote(Event, total=False):
    note: str


class LogCall(Source, total=False):
    validating: bool


class SoftmaxCall(Event, total=False):
    module: str  # qualified name of the nn.Softmax/LogSoftmax/Softmin built with dim=0
    cls: str
    dim: int
    shape: list[int]  # its input's shape, the first call of that rank
    model_input_rank: int | None  # the rank of the watched model's input at that call
    model_input_lead: int | None  # and its leading size
    grad: bool  # grad enabled and the input requires grad (a trained call)


class SchedulerEpochArg(Event, total=False):
    key: str  # the scheduler ('sched0', as in its lr_scheduler event)
    value: float | None  # the value its step() was given (the deprecated epoch argument)
    whole: bool  # a whole number (an epoch count); not one: `scheduler.step(loss)`


class SeqLayerCall(Event, total=False):
    module: str  # qualified name of an nn.LSTM/GRU/RNN/MultiheadAttention with batch_first=False
    cls: str
    shape: list[int]  # its first input's shape (read by it as (time, batch, features))
    model_input_rank: int | None  # the rank of the watched model's input at that call
    model_input_lead: int | None  # and its leading size (None: no tensor argument seen)


class HiddenTensor(TypedDict, total=False):
    name: str  # the attribute path from the watched model: "hids[0].weight", "cell.Wci"
    held: str  # "list", "dict" (a plain container) or "attribute" (a plain tensor attribute)
    numel: int
    shape: list[int]
    grad: float  # the sum of its gradient's absolute values after the step (0: none)
    fingerprint: list[float]  # the sum and the sum of squares of its values


class HiddenParams(Event, total=False):
    tensors: list[HiddenTensor]  # held by no watched optimizer, after a sampled step


class LossCallReversed(Source, total=False):
    site: int
    fn: str
    input_shape: list[int]
    target_shape: list[int]
    broadcast_shape: list[int] | None


class LossInput(Source, total=False):
    site: int
    fn: str
    input_shape: list[int]
    input_dtype: str
    # The least precise float dtype the input's values were rounded to since the op that made
    # them (a bfloat16 softmax cast to float32: bfloat16)
    values_dtype: str | None
    target_shape: list[int]
    target_dtype: str
    target_float: bool
    classes: int | None
    class_dim: int | None
    producer: list[str]  # autograd nodes that made the input (LogSoftmaxBackward0, ...)
    options: dict[str, Any]
    broadcast_shape: list[int] | None
    softmax_dim_size: int
    layout: dict[str, Any]
    clamp: dict[str, Any]  # {op, module}: a clamp at 0 made the class loss's logits (TD521)


class LossTargetsOutOfRange(Source, total=False):
    fn: str  # cross_entropy, nll_loss
    classes: int  # C, from the input's class dim
    input_shape: list[int]
    target_shape: list[int]
    device: str
    ignore_index: int
    out_of_range: int  # targets outside [0, C), ignore_index excepted
    targets: int  # all targets of the call
    counted: int  # targets other than ignore_index
    target_min: int  # over the targets other than ignore_index
    target_max: int
    values: list[list[int]]  # [value, count] of the offending values, most frequent first
    attached: bool  # False: checked before zero-code mode attached (the first loss call)


class LossNotDifferentiable(Source, total=False):
    via: str  # backward, log
    requires_grad: bool
    is_leaf: bool
    grad_enabled: bool
    inference: bool
    model_output: dict[str, Any] | None
    grad_fn: str | None
    leaves: list[list[int]] | None


class LrScheduler(Event, total=False):
    key: str  # "sched0"
    cls: str
    optimizer: str | None
    settings: dict[str, Any]
    source: str | None
    stepped_by_framework: bool  # step() called by a library (Lightning), not the user's line
    built: str | None  # then the user's line that built it (configure_optimizers), if found


class FunctionalDropout(Source, total=False):
    training: bool  # the call's `training` argument
    p: float


class ModeCall(Event, total=False):
    module: str
    root: str
    source: str | None
    training: bool
    validating: bool
    norm: bool  # the module called is a normalization layer (BatchNorm, InstanceNorm)


class PutInEval(Event, total=False):
    model: str
    source: str | None


class LossWithoutGrad(Event, total=False):
    fn: str


class ModelFeeds(Event, total=False):
    model: str  # a watched model whose training forward's output ...
    into: str  # ... was an input of this other watched model's training forward


class Nonfinite(Event, total=False):
    loss_finite: bool
    grads_finite: bool | None
    applied: bool
    nonfinite_params: list[str]
    nonfinite_grads: list[str]
    loss: float | str
    replayed: bool
    first: str  # param, input, activation, loss, grad
    module: str | None
    params: list[str]
    op: str | None
    source: str | None
    culprits: list[dict[str, Any]]
    candidate_sources: list[str]
    model_output_finite: bool
    nonfinite_modules: list[str]
    fraction: float
    shape: list[int]
    received_by: str


class NonfiniteMasked(Event, total=False):
    module: str
    input: bool
    fraction: float | None
    op: str | None
    source: str | None
    mask: dict[str, Any]


class OptimizerHparams(Event, total=False):
    groups: dict[str, dict[str, Any]]  # "opt0/group0" -> {momentum, dampening, decoupled}


class OptimizerFirstStep(Source, total=False):
    optimizer: int  # its index among the watched optimizers (the `optimizers` fact's order)


class OptimizerLayout(Event, total=False):
    held: list[str]
    stale: int


class PartsGraphUnavailable(Event, total=False):
    error: str


class PartsNoSharedParams(Event, total=False):
    parts: list[str]


class PartsNotMeasured(Event, total=False):
    reason: str


class Stopped(Event, total=False):
    reason: str


class Trainable(Event, total=False):
    count: int


class ModelsAdded(Event, total=False):
    models: list[str]
    params: list[str]


class UltralyticsEpoch(Event, total=False):
    epoch: int


class ValidatedModel(Source, total=False):
    model: str
    params: list[str]
    is_trained_model: bool


class Validation(Event, total=False):
    index: int


class ValidationInTrainMode(Event, total=False):
    model: str
    count: int
    forwards: int
    modules: list[str]
    source: str | None
    validating: bool
    trained: bool  # an optimizer holds a param of the model (not a teacher/EMA copy)
    copy_of: str  # an unwatched copy of this watched model (an EMA deep-copied from it)
    # a marker, no pass: the copy's mode was set in the step of its train-mode passes
    mode_set_after: bool
    # an F.dropout that dropped in the validation: its line, p, `training` left at its default
    functional_dropout: dict[str, Any]


EVENTS: dict[str, Spec] = {}
"""Every event kind, with its meaning and payload."""


def _event(kind: str, meaning: str, payload: type, *, writers: tuple[str, ...] = ()) -> None:
    EVENTS[kind] = Spec(kind, meaning, payload, writers)


_event("amp_misuse", "gradients used while still multiplied by the GradScaler scale", AmpMisuse)
_event("audit", "what can train: totals of params, trainable, LoRA and quantized", Audit)
_event("backward_call", "a backward() call site, with the factor applied to its loss", BackwardCall)
_event("backward_site", "a new backward() call site and its id in loss.site", BackwardSite)
_event("cross_entropy_call", "the first cross_entropy call: classes and line", CrossEntropyCall)
_event("cosine_logits", "step 1's logits are cosines times s: s and the params", CosineLogits)
_event("data_base_in_eval", "evaluation inputs that match training batches (leak)", DataBaseInEval)
_event("data_forward", "where the training batches enter the model", DataForward)
_event("data_loader", "a DataLoader found in the user's frames, described", DataLoader)
_event("final_layers", "the modules whose params feed the loss last (graph walk)", FinalLayers)
_event("frozen_modules", "frozen modules' train-mode state, when it changes", FrozenModules)
_event(
    "grad_on_non_float",
    "requires_grad asked of a quantized (non-float) param, and the error it raised",
    GradOnNonFloat,
    writers=("doctor (requires_grad watch, probes/audit.py)",),
)
_event("gradient_cut", "a value cut from the graph (.item(), numpy) reached the loss", GradientCut)
_event("gradient_path", "one walk of the loss's gradient path (explain_gradients)", GradientPath)
_event("graph_holder", "the op whose output keeps an old step's graph alive", GraphHolder)
_event(
    "graph_retained", "graphs of earlier steps still alive, and what reaches them", GraphRetained
)
_event("hand_step", "the weights were updated by hand (no torch optimizer)", HandStep)
_event(
    "idle_backward",
    "a backward pass that many others preceded since the last step: the watched trained "
    "params it gave a gradient",
    IdleBackward,
    writers=("doctor (steps.py)",),
)
_event(
    "probes_paused",
    "the per-pass probes paused for the rest of a step with that many backward passes and "
    "no optimizer step",
    ProbesPaused,
    writers=("doctor (steps.py)",),
)
_event("inference_tensors", "params or buffers that are inference tensors", InferenceTensors)
_event(
    "integration_note",
    "a framework integration could not attach (and why)",
    IntegrationNote,
    writers=("integration:transformers", "integration:ultralytics"),
)
_event("log_call", "the first doc.log() call in training / in validation", LogCall)
_event("loss_call_reversed", "a loss called with (target, input) swapped", LossCallReversed)
_event("loss_without_grad", "a loss computed with gradients off (once a step)", LossWithoutGrad)
_event("softmax_call", "a dim=0 softmax module's first call at an input rank", SoftmaxCall)
_event(
    "scheduler_epoch_arg",
    "a non-plateau LR scheduler's step() given a value (its epoch argument), once per scheduler",
    SchedulerEpochArg,
)
_event(
    "seq_layer_call",
    "a sequence-first (batch_first=False) RNN/attention module's trained call at a new input shape",
    SeqLayerCall,
)
_event(
    "hidden_params",
    "trainable tensors of a watched model that parameters() does not return, after a sampled step",
    HiddenParams,
)
_event("loss_input", "a loss call site and its inputs' shapes, dtypes and producer", LossInput)
_event(
    "loss_targets_out_of_range",
    "class-index targets outside [0, C) given to cross_entropy/nll_loss, checked before it ran",
    LossTargetsOutOfRange,
    writers=("doctor (loss target watch, probes/loss_targets.py)",),
)
_event(
    "loss_not_differentiable",
    "backward() or doc.log() got a loss with no graph",
    LossNotDifferentiable,
)
_event("lr_scheduler", "an LR scheduler, its settings and where it was built", LrScheduler)
_event(
    "functional_dropout",
    "the first F.dropout call (outside nn.Dropout) of a training forward with training on, "
    "and with it off",
    FunctionalDropout,
)
_event("mode_call", "a .train()/.eval() call on a watched module", ModeCall)
_event("put_in_eval", "a watched model's first .eval() by the user", PutInEval)
_event(
    "model_feeds",
    "a watched model's training output was the input of another watched model (a generator's "
    "images given to the discriminator), once per pair in the first steps",
    ModelFeeds,
)
_event(
    "models_added",
    "models watched from a later phase on (zero-code: trained by an optimizer built after attach)",
    ModelsAdded,
)
_event("nonfinite", "the first NaN/Inf of a cause, located (autopsy)", Nonfinite)
_event("nonfinite_masked", "NaN/Inf masked before the loss (where and how)", NonfiniteMasked)
_event(
    "optimizer_hparams", "per param group: momentum, dampening, decoupled decay", OptimizerHparams
)
_event(
    "optimizer_first_step",
    "a watched optimizer's first step() (a None .grad of its params before it is no zeroing)",
    OptimizerFirstStep,
)
_event("optimizer_layout", "which params the optimizers hold, when it changes", OptimizerLayout)
_event("optimizer_step", "the line that calls optimizer.step()", Source)
_event(
    "parts_graph_unavailable", "loss parts' gradients could not be measured", PartsGraphUnavailable
)
_event("parts_no_shared_params", "the logged loss parts share no params", PartsNoSharedParams)
_event("parts_not_measured", "loss parts' gradients were not measured (why)", PartsNotMeasured)
_event("scaler_step", "the line that calls scaler.step()", Source)
_event(
    "stopped",
    "the run was stopped by traindoctor (--max-steps) or the framework",
    Stopped,
    writers=("doctor", "integration:lightning"),
)
_event("trainable", "the number of trainable params at attach", Trainable)
_event(
    "ultralytics_epoch",
    "an Ultralytics epoch ended",
    UltralyticsEpoch,
    writers=("integration:ultralytics",),
)
_event(
    "validated_model",
    "the model a validation evaluates, and whether it is the trained one",
    ValidatedModel,
)
_event(
    "validation",
    "a validation began (doc.validating() or a framework's loop)",
    Validation,
    writers=("doctor",),
)
_event(
    "validation_in_train_mode",
    "a validation ran forwards with modules still in train mode",
    ValidationInTrainMode,
)

# -- facts --------------------------------------------------------------------------------

FACTS: dict[str, Spec] = {}
"""Every fact key (`timeline.facts[key]`), with its meaning and value type."""


def _fact(name: str, meaning: str, type_: Any, *, writers: tuple[str, ...] = ()) -> None:
    FACTS[name] = Spec(name, meaning, type_, writers)


_DOCTOR = ("doctor",)
_fact("mode", "watch, zero-code or a framework's name", str, writers=_DOCTOR)
_fact(
    "framework",
    "the framework driving the loop, if any",
    str | None,
    writers=(
        "doctor",
        "integration:accelerate",
        "integration:autopatch",
        "integration:ultralytics",
    ),
)
_fact("run_id", "the run directory's name", str, writers=_DOCTOR)
_fact("script", "the script `traindoctor run` ran", str | None, writers=_DOCTOR)
_fact("models", "watched model prefix -> class name", dict[str, str], writers=_DOCTOR)
_fact("scaler", "the GradScaler's class name, or None", str | None, writers=_DOCTOR)
_fact(
    "unwatched_optimizers",
    "per torch optimizer not watched that stepped: {class, steps, first, last (open steps), "
    "holds_watched, source}",
    list[dict[str, Any]],
    writers=("doctor (unwatched_steps.py)",),
)
_fact("compiled_models", "watched models that run under torch.compile", list[str], writers=_DOCTOR)
_fact(
    "outcome",
    "how the run ended: {ended, step, reason, exception, ...}",
    dict[str, Any],
    writers=_DOCTOR,
)
_fact("overhead", "traindoctor's time and sampling interval", dict[str, Any], writers=_DOCTOR)
_fact(
    "unavailable_signals",
    "signals of probes that failed (their rules are not judged)",
    list[str],
    writers=_DOCTOR,
)
_fact("unavailable_events", "event kinds of probes that failed", list[str], writers=_DOCTOR)
_fact("unavailable_facts", "fact keys of probes that failed", list[str], writers=_DOCTOR)
_fact(
    "skipped_rules",
    "rules not judged: [{code, missing_signals, missing_events, missing_facts}]",
    list[dict[str, Any]],
    writers=("diagnosis",),
)
_fact(
    "config",
    "the configuration the run used",
    dict[str, Any],
    writers=("api", "integration:runner"),
)
_fact(
    "params",
    "param name -> {shape, numel, dtype, trainable, module, ...} at attach",
    dict[str, dict[str, Any]],
)
_fact("module_types", "module path -> class name", dict[str, str])
_fact(
    "tied_params",
    "param name -> {also: its other qualified names (one tensor in two modules), std at attach}",
    dict[str, dict[str, Any]],
)
_fact("modules", "model prefix -> its submodules' names", dict[str, list[str]])
_fact("parts_shared_params", "params shared by the logged loss parts", int)
_fact(
    "optimizers",
    "per optimizer: {class, groups [{id, lr, params, ...}], created_at}",
    list[dict[str, Any]],
)
_fact(
    "optimizer_activity",
    "per optimizer: steps, pending gradients and since when",
    list[dict[str, Any]],
)
_fact(
    "modes",
    "{sensitive: mode-sensitive modules, steps_in_eval, eval_untrained: [model], eval_since: "
    "{model in eval mode that no stepping optimizer trains: the first step of that run}}",
    dict[str, Any],
)
_fact("copies", "{params, modules}: unheld params and the trained ones they copy", dict[str, Any])
_fact("grads_seen_later", "param -> step its gradient was first seen after attach", dict[str, int])
_fact("metric_calls", '"<metric> (<source>)" -> calls seen (sklearn, torchmetrics)', dict[str, int])
_fact("memory", "how memory is measured: {host_measure, cuda_device}", dict[str, Any])
_fact("bias_before_norm", "bias param -> the norm layer that cancels it", dict[str, str])
_fact(
    "modules_unrun_referenced",
    "modules forward never ran on the structural steps whose attribute name the forward of "
    "the module holding them mentions (a branch switched off, not a layer left unused)",
    list[str],
)
_fact("audit", "what can train, per model and component (TD502's table)", dict[str, Any])
_fact("validation_metrics", "metric names logged inside doc.validating()", list[str])
_fact(
    "ultralytics",
    "the Ultralytics trainer's settings and validations",
    dict[str, Any],
    writers=("integration:ultralytics",),
)
_fact(
    "lightning",
    "the Lightning trainer's settings",
    dict[str, Any],
    writers=("integration:lightning",),
)
_fact(
    "transformers",
    "the HF Trainer's arguments",
    dict[str, Any],
    writers=("integration:transformers",),
)

# -- a distributed job (issue 16) -----------------------------------------------------------
# Recorded by each rank (probes/ranks.py), in a job of more than one process only.
_signal(
    "ranks.ddp",
    "per step where it changes: {model prefix: {kind: ddp|fsdp, and for DDP: "
    "broadcast_buffers, find_unused_parameters, unsynced: params of the wrapped module DDP "
    "does not synchronize, ignored: params and buffers DDP was told to ignore}}",
)
_signal(
    "ranks.param_fp",
    "per fingerprint step (1-4, powers of 2, every FP_EVERY-th): {'<param>#2': L2 norm, "
    "'<param>#1': L1 norm} of each DDP-wrapped module's params at the step's first training "
    "forward",
)
_signal(
    "ranks.buffer_fp",
    "per fingerprint step: {'<buffer>#2': L2 norm, '<buffer>#1': L1 norm} of each DDP-wrapped "
    "module's floating-point buffers at the step's first training forward (after DDP's buffer "
    "broadcast)",
)
_signal(
    "ranks.bypass",
    "per step with one: {count, source} training forwards of a DDP-wrapped module called "
    "directly, not through its DDP wrapper (source: the user's line of the first)",
)
_signal(
    "ranks.sampler",
    "per step where it changes: {loader: {epoch, shuffle, batches, seed, dataset}} of each "
    "iterated DataLoader whose sampler is a DistributedSampler",
)
_signal(
    "ranks.sync",
    "per step with a DDP wrapper's training forwards not all synchronized, or several: "
    "{synced, unsynced, backwards, last, source} forwards through the wrapper with and "
    "without require_backward_grad_sync (no_sync()), the step's backward passes, whether the "
    "forward before its last backward synchronized, and (last False) the user's line of the "
    "step's last unsynchronized forward",
)
_signal(
    "ranks.save",
    "per step with one: [{path, host, source}] torch.save calls to a file path (absolute), "
    "with the user's line",
)
_signal(
    "ranks.loader",
    "once: {built, iterated} the user's lines that built the DataLoader the training loop "
    "iterates and that loop (read from the source, distributed/loader_line.py)",
)
_signal(
    "ranks.collectives",
    "per step with one: {n, calls: [[op, source], ...]} the torch.distributed collectives "
    "this rank called on the whole job's group (n of them; the first MAX_CALLS with the user's "
    "line)",
)
# The job timeline (distributed/job_timeline.py): each rank's values side by side, keyed by
# rank (a string, as JSON keys are), read only by the merge's cross-rank rules.
_signal(
    "job.ranks",
    "at step 0: {rank: {last_step, ended, outcome}} of each rank whose timeline was read "
    "(outcome: its `outcome` fact, how it ended, when it closed)",
)
_signal("job.ddp", "at step 0: {rank: its last ranks.ddp value}")
_signal("job.param_fp", "per fingerprint step: {rank: that rank's ranks.param_fp}")
_signal("job.buffer_fp", "per fingerprint step: {rank: that rank's ranks.buffer_fp}")
_signal("job.bypass", "per step: {rank: that rank's ranks.bypass}")
_signal("job.data_fp", "per step: {rank: that rank's data.fp}")
_signal("job.data_samples", "per step: {rank: that rank's data.samples}")
_signal("job.loss", "per step: {rank: that rank's loss.backward}")
_signal("job.nonfinite", "per step: {rank: that rank's numerics.nonfinite}")
_signal("job.grads_none", "per sampled step: {rank: that rank's grads.none}")
_signal("job.sync", "per step: {rank: that rank's ranks.sync}")
_signal("job.save", "per step: {rank: that rank's ranks.save}")
_signal("job.loader", "once: {rank: that rank's ranks.loader}")
_signal("job.collectives", "per step: {rank: that rank's ranks.collectives}")
_signal(
    "job.val",
    "per validation step: {rank: {name: the one value that rank logged in the validation}} "
    "(loss.val as 'loss', and its validation_metrics)",
)

# -- experiments on a copy (issue 17) -------------------------------------------------------
# Run at close under `traindoctor check` (or TRAINDOCTOR_EXPERIMENTS=1): Karpathy's recipe on a
# deep copy of the model, the captured batch and a fresh optimizer of the user's class
# (src/traindoctor/experiments/); the user's run is never touched.


class Experiment(Event, total=False):
    # init_loss | overfit_one_batch | lr_probe | input_independent | batch_independence | skipped
    name: str
    verdict: str  # what it concluded: ok | failed | partial | not_measured | ...
    reason: str  # why it was skipped or not measured
    loss_fn: str  # the replayed loss (cross_entropy, mse_loss, ...)
    source: str | None  # the user's line of the replayed loss call
    curves: dict[str, list[float]]  # the measured loss curves, by label (lr x1, x10, ...)
    seconds: float  # wall time of the experiment
    steps: int  # optimizer steps run on the copy
    facts: dict[str, Any]  # the experiment's own measurements


_event(
    "experiment",
    "an experiment run on a copy of the model at close (loss at init, overfit one batch, lr "
    "probe, input-independent baseline, batch independence) and what it measured",
    Experiment,
)


class FixTrial(Event, total=False):
    code: str  # the finding's code
    key: list[Any]  # the finding's key: [code, module, params, op] (findings.Finding.key)
    trial: dict[str, Any]  # its evidence["trial"]: fix, verdict, curves, steps, summary, ...


_event(
    "fix_trial",
    "a fix trial of an error finding at close (experiments/trials.py): the run replayed on a "
    "copy as written and with the fix; re-attached to the finding by every diagnosis",
    FixTrial,
)
