"""A plain `accelerate.Accelerator` loop over a PEFT LoRA model (optionally 4-bit), watched with
`traindoctor.accelerate.watch`. Tiny Llama built from a config: nothing is downloaded."""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import traindoctor.accelerate  # noqa: E402

torch.set_num_threads(1)
hf_logging.set_verbosity_error()

VOCAB, SEQ = 64, 12


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons: each test builds its own, also
    after another module's test left one (a Hugging Face Trainer builds an Accelerator with
    gradient_accumulation_steps=1, which a later Accelerator(gradient_accumulation_steps=2)
    would silently keep)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def llama(seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def lora(model: torch.nn.Module) -> torch.nn.Module:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, config)


def batches(n: int, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    """Counting sequences (mod VOCAB): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, VOCAB, (size, 1), generator=g) + torch.arange(SEQ)) % VOCAB
        for _ in range(n)
    ]


def train(model, optimizer, *, micro_batches=16, accumulate=2, watch=True, backward=None, tmp=None):
    """The user's loop. `backward(accelerator, loss)` is the line under test (default:
    accelerator.backward). Returns (model, doctor or None, losses)."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    model, optimizer = accelerator.prepare(model, optimizer)
    doc = None
    if watch:
        doc = traindoctor.accelerate.watch(
            accelerator, model, optimizer, out_dir=tmp / "runs", console=False
        )
    losses = []
    model.train()
    for i, ids in enumerate(batches(micro_batches)):
        with accelerator.accumulate(model):
            loss = model(input_ids=ids, labels=ids).loss
            if backward is None:
                accelerator.backward(loss)
            else:
                backward(accelerator, loss)
            optimizer.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
            losses.append(loss.item())
        if doc is not None:
            doc.log(loss=loss)
            if (i + 1) % 8 == 0:
                with doc.validating(model):
                    val = batches(1, seed=9)[0]
                    doc.log(loss=model(input_ids=val, labels=val).loss)
    if doc is not None:
        doc.close()
    return model, doc, losses


def adamw(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def loud(report) -> list[str]:
    return [f"{f.code} {f.title}" for f in report.findings if f.severity.value != "info"]


def test_healthy_lora_loop_with_accumulation_is_silent_and_audit_names_adapters(tmp_path):
    model = lora(llama())
    model, doc, losses = train(model, adamw(model), micro_batches=24, tmp=tmp_path)
    report = doc.report
    assert loud(report) == [], loud(report)
    assert losses[-1] < losses[0]
    # The optimizer steps are the synced micro-batches: 24 / 2.
    assert report.steps == 12 and report.framework == "accelerate"
    tl = report.timeline
    # accelerator.backward divides each micro-batch loss by 2: seen as a constant factor.
    assert all(v == [0.5, 0.5] for _, v in tl.series("loss.factor"))
    audit = next(f for f in report.findings if f.code == "TD502")
    assert "8 LoRA adapter tensors" in audit.title
    llm = next(iter(v for k, v in audit.evidence.items() if k != "total"))
    assert llm["lora_tensors"] == llm["trainable_tensors"] == 8
    assert llm["frozen"] > 0  # the base model, frozen by PEFT


def test_plain_watch_needs_the_torch_optimizer_inside(tmp_path):
    """`unwrap_optimizer` gives the optimizer whose step() really runs; hooks on the wrapper
    would never fire (AcceleratedOptimizer skips torch's Optimizer.__init__)."""
    model = lora(llama())
    inner = adamw(model)
    accelerator = Accelerator(cpu=True)
    model, wrapped = accelerator.prepare(model, inner)
    assert wrapped is not inner
    assert traindoctor.accelerate.unwrap_optimizer(wrapped) is inner
    assert traindoctor.accelerate.unwrap_optimizer(inner) is inner
    # Plain td.watch unwraps it too, and sees every step.
    doc = traindoctor.watch(model, wrapped, out_dir=tmp_path, console=False)
    for _ in range(3):
        wrapped.zero_grad()
        accelerator.backward(model(input_ids=torch.randint(0, 64, (2, 8))).logits.pow(2).mean())
        wrapped.step()
    report = doc.close()
    assert report.steps == 3 and not report.internal_errors


def test_unnormalized_accumulation_with_sgd_is_td515_at_the_backward_line(tmp_path):
    """`loss.backward()` inside `accelerator.accumulate()` instead of `accelerator.backward`:
    nothing divides the loss by the 4 micro-batches, so SGD steps 4x the set lr."""
    model = lora(llama())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    line = inspect.currentframe().f_lineno + 1
    unnormalized = lambda accelerator, loss: loss.backward()  # noqa: E731
    _, doc, _ = train(
        model, optimizer, micro_batches=24, accumulate=4, backward=unnormalized, tmp=tmp_path
    )
    report = doc.report
    found = [f for f in report.findings if f.code == "TD515"]
    assert found, loud(report)
    assert found[0].where.source.endswith(f"test_accelerate.py:{line}")
    assert [f.code for f in report.findings if f.severity.value == "error"] == []


def test_optimizer_built_before_get_peft_model_is_td103_on_the_adapters(tmp_path):
    """The optimizer holds the base weights (now frozen by PEFT), not the LoRA adapters."""
    base = llama()
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-2)
    model = lora(base)
    _, doc, _ = train(model, optimizer, micro_batches=8, tmp=tmp_path)
    report = doc.report
    top = report.findings[0]
    assert top.code == "TD103", loud(report)
    assert top.where.params and all(".lora_" in p for p in top.where.params)


def test_params_bit_identical_with_and_without_watch(tmp_path):
    def run(watch):
        model = lora(llama())
        model, _, losses = train(model, adamw(model), micro_batches=8, watch=watch, tmp=tmp_path)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return model.state_dict(), losses

    plain, plain_losses = run(False)
    watched, watched_losses = run(True)
    assert plain.keys() == watched.keys()
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert plain_losses == watched_losses


bnb = pytest.importorskip("bitsandbytes")


def llama_4bit_lora() -> torch.nn.Module:
    from traindoctor.scenarios.seeds.seed004_vlm import quantize_4bit

    # Hidden 64: bitsandbytes' CPU kernel for no-grad forwards (the validations) packs the
    # weights in blocks of 64 input features and fails on narrower layers.
    model = llama(hidden=64)
    quantize_4bit(model.model, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"))
    return lora(model)


def test_healthy_4bit_lora_loop_is_silent(tmp_path):
    model = llama_4bit_lora()
    _, doc, losses = train(model, adamw(model), micro_batches=16, tmp=tmp_path)
    report = doc.report
    assert loud(report) == [], loud(report)
    assert losses[-1] < losses[0]
    audit = next(f for f in report.findings if f.code == "TD502")
    assert "12 quantized tensors (Params4bit), 8 LoRA adapter tensors" in audit.title


def test_requires_grad_on_4bit_weights_is_td501_with_the_line(tmp_path):
    """Unfreezing 'everything' on a 4-bit model raises in torch; the report written as the
    exception leaves the `with` block says which weights are 4-bit and where it was asked."""
    model = llama_4bit_lora()
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, adamw(model))
    with (
        pytest.raises(RuntimeError),
        traindoctor.accelerate.watch(
            accelerator, model, optimizer, out_dir=tmp_path / "runs", console=False
        ) as doc,
    ):
        line = inspect.currentframe().f_lineno + 2
        for p in model.parameters():
            p.requires_grad = True
    top = doc.report.findings[0]
    assert top.code == "TD501" and top.where.source.endswith(f"test_accelerate.py:{line}")
    assert any("q_proj.base_layer.weight" in p for p in top.where.params)
