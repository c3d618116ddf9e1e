"""The trainable-parameter audit (oracle: counts taken by the test itself) and the interception
of `requires_grad` requests on non-float params (the user's error unchanged, patches removed)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
from torch import nn

import traindoctor as td
from tests._loop import assert_bit_identical, params_of
from traindoctor import _requires_grad_patch as rgp
from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached
from traindoctor.probes.audit import audit_models, is_lora, is_quantized, watch_requires_grad
from traindoctor.report.console import render_text
from traindoctor.report.markdown import render_markdown

HAS_VLM_LIBS = all(importlib.util.find_spec(m) for m in ("transformers", "peft", "bitsandbytes"))
needs_vlm = pytest.mark.skipif(not HAS_VLM_LIBS, reason="needs transformers, peft, bitsandbytes")


class Net(nn.Module):
    """A float encoder, a norm and a head, plus an int8 'quantized' weight in `quant`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)
        self.quant = nn.Module()
        self.quant.weight = nn.Parameter(torch.ones(4, 8, dtype=torch.int8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quant.weight.float().sum() * 0.0  # uses the int8 weight without training it
        return self.head(self.norm(self.encoder(x))) + q


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, on_step=None) -> None:
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        if on_step is not None:
            on_step(step)
        x = torch.randn(16, 6, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _row(audit: dict, component: str) -> dict:
    return next(r for r in audit["components"] if r["component"] == component)


# -- the audit ------------------------------------------------------------------------------
def test_audit_matches_brute_force_counts():
    torch.manual_seed(0)
    model = Net()
    model.encoder.requires_grad_(False)
    opt = torch.optim.SGD([model.head.weight], lr=0.1)  # head.bias and norm: trainable, not held
    audit = audit_models({"": model}, held={id(p) for g in opt.param_groups for p in g["params"]})
    assert [r["component"] for r in audit["components"]] == ["encoder", "norm", "head", "quant"]
    for comp in ("encoder", "norm", "head", "quant"):
        params = list(getattr(model, comp).parameters())
        row = _row(audit, comp)
        assert row["params"] == sum(p.numel() for p in params)
        assert row["tensors"] == len(params)
        assert row["trainable"] == sum(p.numel() for p in params if p.requires_grad)
        assert row["frozen"] == sum(p.numel() for p in params if not p.requires_grad)
        assert row["quantized_tensors"] == sum(not p.is_floating_point() for p in params)
    assert _row(audit, "norm")["norm_tensors"] == 2
    assert _row(audit, "quant")["dtypes"] == {"int8": 1}
    assert _row(audit, "quant")["quantized_names"] == ["quant.weight"]
    assert _row(audit, "head")["not_in_optimizer"] == ["head.bias"]
    assert _row(audit, "norm")["not_in_optimizer"] == ["norm.weight", "norm.bias"]
    t = audit["totals"]
    assert t["params"] == sum(p.numel() for p in model.parameters())
    assert t["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_classification_helpers():
    assert is_quantized(torch.zeros(2, dtype=torch.uint8))
    assert is_quantized(torch.zeros(2, dtype=torch.int8))
    assert not is_quantized(torch.zeros(2, dtype=torch.bfloat16))
    assert is_lora("llm.base_model.model.layers.0.q_proj.lora_A.default.weight")
    assert is_lora("emb.lora_embedding_A.default")
    assert not is_lora("llm.model.layers.0.q_proj.base_layer.weight")
    assert not is_lora("flora_A.weight")


def test_watch_records_the_audit_once_and_again_after_a_change(tmp_path):
    torch.manual_seed(0)
    model = Net()
    model.encoder.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)

    def unfreeze(step):
        if step == 5:  # stage 2: the encoder trains too
            model.encoder.requires_grad_(True)
            opt.add_param_group({"params": list(model.encoder.parameters())})

    _train(model, opt, 12, on_step=unfreeze)
    report = doc.close()
    steps = [e["step"] for e in report.timeline.events("audit")]
    assert steps[0] == 1 and len(steps) == 2, steps  # at attach, and after the unfreeze
    audit = report.timeline.facts["audit"]
    assert _row(audit, "encoder")["trainable_tensors"] == 4
    f = next(f for f in report.findings if f.code == "TD502")
    assert f.evidence["encoder"]["trainable"] == sum(p.numel() for p in model.encoder.parameters())
    assert f.evidence["audited_at_steps"] == steps
    assert report.status == "healthy"


def test_audit_is_reported_in_console_and_markdown(tmp_path):
    model = Net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        _train(model, opt, 3)
    text = render_text(doc.report, width=100)
    assert "TD502 trainable-audit" in text
    assert "quant={params: 32, trainable: 0, frozen: 32, quantized: 32" in text
    md = render_markdown(doc.report)
    assert "## What trains" in md
    assert "Trainable-parameter audit (TD502) as of step 1: values (tensors)." in md
    assert "| `quant` | 32 (1) | 0 (0) | 32 (1) | 32 (1) Parameter | 0 (0) | 0 | int8 ×1 |" in md
    assert "| **total** |" in md


# -- requires_grad interception --------------------------------------------------------------
def test_error_propagates_unchanged_and_is_recorded(tmp_path):
    model = Net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    try:
        model.quant.weight.requires_grad = True
    except RuntimeError as err:
        plain = (type(err), str(err))
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    line = inspect.currentframe().f_lineno + 2
    with pytest.raises(RuntimeError) as info:
        model.quant.weight.requires_grad = True
    assert (type(info.value), str(info.value)) == plain
    assert model.quant.weight.requires_grad is False
    report = doc.close()
    (event,) = report.timeline.events("grad_on_non_float")
    assert event["param"] == "quant.weight"
    assert event["component"] == "quant"
    assert (event["dtype"], event["class"], event["via"]) == (
        "int8",
        "Parameter",
        "requires_grad =",
    )
    assert event["source"].endswith(f"test_audit.py:{line}")
    assert report.findings[0].code == "TD501"


def test_module_requires_grad_is_recorded_once_per_line(tmp_path):
    model = Net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for _ in range(3):  # a user who catches the error and tries again
        with pytest.raises(RuntimeError):
            model.requires_grad_(True)
    report = doc.close()
    (event,) = report.timeline.events("grad_on_non_float")
    assert event["via"] == "requires_grad_()"
    assert event["count"] == 3
    assert report.findings[0].evidence["attempts"] == 3


def test_successful_and_read_requests_behave_as_without_traindoctor(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    p = model.head.weight
    p.requires_grad = False
    assert p.requires_grad is False and p.requires_grad_() is p and p.requires_grad is True
    model.quant.weight.requires_grad = False  # setting False on an int tensor is allowed
    assert not doc.timeline.events("grad_on_non_float")
    grad = torch.zeros(3)
    grad.requires_grad_(False)  # plain tensors (zero_grad's p.grad) are not intercepted
    doc.close()


def test_patch_is_installed_while_watched_and_removed_after(tmp_path):
    before = dict(vars(nn.Parameter))
    m1, m2 = Net(), Net()
    o1 = torch.optim.SGD(m1.head.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.head.parameters(), lr=0.1)
    d1 = td.watch(m1, o1, out_dir=tmp_path, console=False)
    prop = vars(nn.Parameter)["requires_grad"]
    # The getter is torch's own C getter: a read costs one property dispatch, no Python frame.
    assert prop.fget == torch._C.TensorBase.__dict__["requires_grad"].__get__
    d2 = td.watch(m2, o2, out_dir=tmp_path, console=False)
    d1.close()
    assert rgp.is_patched()
    with pytest.raises(RuntimeError):
        m2.quant.weight.requires_grad = True
    d2.close()
    assert not rgp.is_patched()
    assert dict(vars(nn.Parameter)) == before
    assert len(d2.report.timeline.events("grad_on_non_float")) == 1
    assert not d1.report.timeline.events("grad_on_non_float")  # closed before the attempt


def test_a_failing_listener_changes_nothing(tmp_path, monkeypatch):
    model = Net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)

    def boom(*args):
        raise ValueError("traindoctor bug")

    monkeypatch.setattr("traindoctor.probes.audit.user_source_with_code", boom)
    with pytest.raises(RuntimeError, match="floating point"):
        model.quant.weight.requires_grad = True
    report = doc.close()
    assert [e["where"] for e in report.internal_errors] == ["requires_grad watch"]
    assert not rgp.is_patched()


def test_training_is_bit_identical_with_the_patch(tmp_path):
    def run(watched: bool):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
        doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watched else None

        def toggle(step):  # GAN-style flag flips every step go through the patched setter
            for p in model.encoder.parameters():
                p.requires_grad = step % 2 == 0

        _train(model, opt, 8, on_step=toggle)
        if doc is not None:
            doc.close()
        return params_of(model)

    assert_bit_identical(run(False), run(True))


def test_zero_code_session_hook_records_a_setup_time_request(tmp_path):
    """What the zero-code session's install line (`watch_requires_grad(doctor)`) gives: a
    request made before any training, with the param named through the module holding it."""
    doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
    with attached(doctor):
        handle = watch_requires_grad(doctor.run)
        try:
            model = Net()
            with pytest.raises(RuntimeError):
                for p in model.parameters():
                    p.requires_grad = True
        finally:
            handle.remove()
    assert not rgp.is_patched()
    (event,) = doctor.timeline.events("grad_on_non_float")
    assert (event["param"], event["component"], event["attached"]) == (
        "quant.weight",
        "quant",
        False,
    )
    assert _row(doctor.timeline.facts["audit"], "quant")["quantized_tensors"] == 1
    doctor.close()


# -- real 4-bit + PEFT ------------------------------------------------------------------------
@needs_vlm
def test_audit_of_a_4bit_lora_vlm_matches_brute_force():
    from traindoctor.scenarios.seeds.seed004_vlm import build_model

    torch.manual_seed(0)
    model = build_model()
    audit = audit_models({"": model})
    assert [r["component"] for r in audit["components"]] == ["vision_tower", "projector", "llm"]
    llm = _row(audit, "llm")
    named = list(model.llm.named_parameters())
    quant = [p for _, p in named if type(p).__name__ == "Params4bit"]
    lora = [p for n, p in named if ".lora_A." in n or ".lora_B." in n]
    assert llm["quantized_tensors"] == len(quant) == 14
    assert llm["quantized_classes"] == {"Params4bit": 14}
    # A 4-bit tensor stands for twice as many values as the uint8 bytes it stores.
    assert llm["quantized"] == sum(2 * p.numel() for p in quant)
    assert llm["lora_tensors"] == len(lora) == 8
    assert llm["lora"] == sum(p.numel() for p in lora)
    assert llm["trainable_tensors"] == llm["lora_trainable_tensors"] == 8
    assert llm["norm_tensors"] == 5  # 2 per decoder layer + the final norm
    assert _row(audit, "projector")["trainable_tensors"] == 2
    assert _row(audit, "vision_tower")["trainable_tensors"] == 0


@needs_vlm
def test_peft_wrapper_is_looked_through():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = get_peft_model(GPT2LMHeadModel(cfg), LoraConfig(r=2, target_modules=["c_attn"]))
    audit = audit_models({"": model})
    assert audit["wrappers"] == ["PeftModel", "LoraModel"]
    # lm_head's weight is tied to transformer.wte: counted once, under the component seen first.
    assert [r["component"] for r in audit["components"]] == ["transformer"]
    assert audit["totals"]["tensors"] == len(list(model.parameters()))
    assert _row(audit, "transformer")["lora_tensors"] == 2


@needs_vlm
def test_healthy_seed004_run_reports_what_trains_after_stage_two(tmp_path):
    from traindoctor.scenarios import get
    from traindoctor.scenarios.demo import run_scenario

    report = run_scenario(get("seed004_lora_trainable"), out_dir=tmp_path)  # zero-code
    f = next(f for f in report.findings if f.code == "TD502")
    # Stage 2 (step 7) unfroze the vision tower: the table is the model as the run left it.
    assert f.evidence["audited_at_steps"][0] == 1 and len(f.evidence["audited_at_steps"]) == 2
    assert f.evidence["vision_tower"]["trainable_tensors"] == 4
    assert f.evidence["projector"]["trainable_tensors"] == 2
    llm = f.evidence["llm"]
    assert (llm["quantized_tensors"], llm["lora_tensors"], llm["trainable_tensors"]) == (14, 8, 8)
    assert "14 quantized tensors (Params4bit), 8 LoRA adapter tensors" in f.title


def test_zero_code_run_that_fails_in_setup_reports_td501(tmp_path, monkeypatch):
    """`traindoctor run` on a script whose requires_grad loop over an int8 weight raises
    before any optimizer exists: the report written on the exception carries TD501."""
    from traindoctor.integrations.runner import run_target

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "import torch.nn as nn\n"
        "model = nn.Sequential(nn.Linear(4, 4))\n"
        "model.quant = nn.Module()\n"
        "model.quant.weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int8), "
        "requires_grad=False)\n"
        "for p in model.parameters():\n"
        "    p.requires_grad = True\n"
    )
    monkeypatch.chdir(tmp_path)
    result = run_target(str(script), [], out_dir=tmp_path / "runs", console=False)
    report = result.report
    assert report.outcome["ended"] == "exception"
    top = report.findings[0]
    assert top.code == "TD501" and top.where.source.endswith("train.py:7")
    assert "quant.weight" in top.where.params
