"""Everything a user does with a model or optimizer works while traindoctor is attached, and gives
the same result as without (issue 13).

Each pattern is a small program `program(attach)` that trains a tiny model and returns what it
computed: final parameters and buffers, outputs, losses, the exceptions it caught. It runs three
times in this process: plainly (`attach` does nothing), under `td.watch(model, optimizer)`
(`attach` is `td.watch`) and in zero-code mode (the whole program inside the discovery hooks of
`traindoctor run`; `attach` does nothing). The three results must be equal bit for bit, the same
exceptions must be raised, and the doctor's guard must have recorded no internal error. One test
also runs every program as a script, plainly and under `traindoctor run`.

Not tested, impossible on a CPU-only machine: moving a model between devices (`.cuda()`,
`.to("cuda")`, `nn.DataParallel` over several GPUs); on CPU `nn.DataParallel` calls the module
itself. The meta device is tested (`model.to("meta")`, then `to_empty` and a state_dict load).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.checkpoint import checkpoint

import traindoctor as td
from traindoctor._hooks import CopySafeHook
from traindoctor.doctor import Doctor
from traindoctor.integrations.autopatch import attached

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

STEPS = 8
Attach = Callable[..., contextlib.AbstractContextManager]


# -- helpers ----------------------------------------------------------------------------------
def _mlp(i: int = 4, h: int = 8, o: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, o))


def _data(n: int = 16, i: int = 4, o: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, i, generator=g), torch.randn(n, o, generator=g)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _opt_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    sd = opt.state_dict()
    return {"state": copy.deepcopy(sd["state"]), "groups": copy.deepcopy(sd["param_groups"])}


def _caught(fn: Callable[[], Any]) -> Any:
    """What fn returns, or the exception it raised (type and message)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  (the exception is the result compared)
        return ("raised", type(exc).__name__, str(exc))


def _same(a: Any, b: Any, where: str = "result") -> None:
    assert type(a) is type(b), f"{where}: {a!r:.300} != {b!r:.300}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert torch.equal(a, b) or (
            a.isnan().any() and torch.equal(a.nan_to_num(), b.nan_to_num())
        ), f"{where}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _nothing(*_models: Any, **_kw: Any) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def run(program: Callable[[Attach], Any], how: str, out_dir) -> tuple[Any, list[Any]]:
    """(what the program returned or raised, the internal errors the doctors recorded)."""
    doctors: list[Any] = []

    def watch(model: Any, optimizer: Any = None, **kw: Any) -> Any:
        doc = td.watch(model, optimizer, console=False, out_dir=out_dir, budget=1.0, **kw)
        doctors.append(doc)
        return doc

    torch.manual_seed(0)
    if how == "plain":
        result = _caught(lambda: program(_nothing))
    elif how == "watch":
        result = _caught(lambda: program(watch))
        for doc in doctors:
            doc.close()
    else:
        doctor = Doctor(out_dir=out_dir, mode="zero-code", console=False, budget=1.0)
        doctors.append(doctor)
        with attached(doctor):
            result = _caught(lambda: program(_nothing))
        doctor.close()
    errors = [e for doc in doctors for e in doc.guard.errors]
    return result, errors


def check(program: Callable[[Attach], Any], tmp_path) -> Any:
    plain, _ = run(program, "plain", tmp_path / "plain")
    assert isinstance(plain, dict), plain  # it ran to its end
    for how in ("watch", "zero-code"):
        result, errors = run(program, how, tmp_path / how)
        assert not errors, [(e.where, e.error, e.traceback) for e in errors]
        _same(plain, result, how)
    return plain


# -- 1. torch.func / torch.autograd.grad training loops ---------------------------------------
def maml(attach: Attach) -> Any:
    """MAML: an inner loop of autograd.grad(create_graph=True) steps on functional_call."""
    model = _mlp(1, 16, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    with attach(model, opt):
        for _ in range(STEPS):
            opt.zero_grad()
            meta = torch.zeros(())
            for _task in range(2):
                amp, phase = torch.rand(2, generator=g) * 2 + 0.5
                xs, xq = torch.rand(2, 5, 1, generator=g) * 10 - 5
                ys, yq = amp * torch.sin(xs + phase), amp * torch.sin(xq + phase)
                params = dict(model.named_parameters())
                for _inner in range(2):
                    inner = F.mse_loss(functional_call(model, params, (xs,)), ys)
                    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
                    params = {n: p - 0.01 * gr for (n, p), gr in zip(params.items(), grads)}
                meta = meta + F.mse_loss(functional_call(model, params, (xq,)), yq)
            meta.backward()
            opt.step()
            losses.append(meta.detach())
    return {"state": _state(model), "losses": losses, "opt": _opt_state(opt)}


def per_sample_grads(attach: Attach) -> Any:
    """DP-SGD style: torch.func.vmap(grad(...)) per-sample gradients, clipped, set as .grad."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()

    def loss_of(params: Any, buffers: Any, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return F.mse_loss(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_of), in_dims=(None, None, 0, 0))
    with attach(model, opt):
        for _ in range(STEPS):
            params = {k: v.detach() for k, v in model.named_parameters()}
            buffers = {k: v.detach() for k, v in model.named_buffers()}
            grads = per_sample(params, buffers, x, y)
            for name, p in model.named_parameters():
                p.grad = grads[name].clamp(-1, 1).mean(0)
            opt.step()
            opt.zero_grad()
    return {"state": _state(model), "out": model(x).detach()}


def func_grad_loop(attach: Attach) -> Any:
    """A whole training loop in torch.func: grad of a functional loss, update by hand."""
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()

    def loss_of(params: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(model, params, (xb,)), yb)

    with attach(model, opt):
        for step in range(STEPS):
            params = {k: v.detach() for k, v in model.named_parameters()}
            grads, loss = torch.func.grad_and_value(loss_of)(params, x, y)
            if step % 2:
                for name, p in model.named_parameters():
                    p.grad = grads[name]
                opt.step()
            else:  # a functional update written back in place
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        p.sub_(0.05 * grads[name])
    return {"state": _state(model), "loss": loss}


# -- 2. double backward -----------------------------------------------------------------------
def wgan_gp(attach: Attach) -> Any:
    """WGAN-GP: the critic's gradient penalty through autograd.grad(create_graph=True)."""
    gen = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    critic = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(1)
    losses = []
    with attach({"gen": gen, "critic": critic}, [opt_d, opt_g]):
        for _ in range(STEPS):
            real, z = torch.randn(8, 2, generator=g) + 2, torch.randn(8, 2, generator=g)
            for _critic in range(2):
                fake = gen(z).detach()
                eps = torch.rand(8, 1, generator=g)
                mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
                score = critic(mixed)
                (slope,) = torch.autograd.grad(
                    score, mixed, grad_outputs=torch.ones_like(score), create_graph=True
                )
                penalty = ((slope.norm(2, dim=1) - 1) ** 2).mean()
                loss_d = critic(fake).mean() - critic(real).mean() + 10 * penalty
                opt_d.zero_grad()
                loss_d.backward()
                opt_d.step()
            opt_g.zero_grad()
            loss_g = -critic(gen(z)).mean()
            loss_g.backward()
            opt_g.step()
            losses.append((loss_d.detach(), loss_g.detach()))
    return {"gen": _state(gen), "critic": _state(critic), "losses": losses}


def grad_norm_penalty(attach: Attach) -> Any:
    """A penalty on the parameters' own gradient norm: backward(create_graph=True) then a
    second backward through the gradients (R1/SAM-like), and torch.autograd.functional.hvp."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    hvps = []
    with attach(model, opt):
        for step in range(STEPS):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
            total = loss + 0.1 * sum(gr.pow(2).sum() for gr in grads)
            total.backward()
            opt.step()
            if step == 3:
                w = model[0].weight.detach()

                def f(weight: torch.Tensor) -> torch.Tensor:
                    return F.mse_loss(model[2](torch.tanh(x @ weight.T)), y)

                hvps.append(torch.autograd.functional.hvp(f, w, torch.ones_like(w))[1])
    return {"state": _state(model), "hvp": hvps}


# -- 3. activation checkpointing --------------------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool, sequential: bool = False) -> None:
        super().__init__()
        self.reentrant, self.sequential = reentrant, sequential
        self.inp = nn.Linear(4, 16)
        self.block = nn.Sequential(
            nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 16), nn.Tanh()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.sequential:
            h = torch.utils.checkpoint.checkpoint_sequential(
                self.block, 2, h, use_reentrant=self.reentrant
            )
        else:
            h = checkpoint(self.block, h, use_reentrant=self.reentrant)
        return self.head(h)


def _checkpointing(reentrant: bool, sequential: bool = False) -> Callable[[Attach], Any]:
    def program(attach: Attach) -> Any:
        model = Checkpointed(reentrant, sequential)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x, y = _data()
        losses = []
        with attach(model, opt):
            for _ in range(STEPS):
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
        return {"state": _state(model), "losses": losses, "rng": torch.get_rng_state()}

    program.__name__ = f"checkpoint_{'reentrant' if reentrant else 'nonreentrant'}" + (
        "_sequential" if sequential else ""
    )
    return program


# -- 4. several backward calls per step, retain_graph ------------------------------------------
def multi_backward(attach: Attach) -> Any:
    trunk, head_a, head_b = _mlp(4, 8, 8), nn.Linear(8, 2), nn.Linear(8, 3)
    model = nn.ModuleDict({"trunk": trunk, "a": head_a, "b": head_b})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    c = torch.arange(16) % 3
    with attach(model, opt):
        for step in range(STEPS):
            opt.zero_grad()
            h = trunk(x)
            la, lb = F.mse_loss(head_a(h), y), F.cross_entropy(head_b(h), c)
            if step % 4 == 0:
                la.backward(retain_graph=True)
                lb.backward()
            elif step % 4 == 1:
                torch.autograd.backward([la, lb])
            elif step % 4 == 2:  # the same graph twice, then only the heads
                (la + lb).backward(retain_graph=True)
                (la + lb).backward(retain_graph=True)
                lb.backward(inputs=list(head_b.parameters()))
            else:  # gradient accumulation over two micro-batches
                for xb, yb in zip(x.chunk(2), y.chunk(2)):
                    (F.mse_loss(head_a(trunk(xb)), yb) / 2).backward()
            opt.step()
    return {"state": _state(model)}


def saved_tensor_hooks(attach: Attach) -> Any:
    """The user's saved_tensors_hooks see what they see plainly (our hooks save nothing for
    backward), save_on_cpu, and a backward under detect_anomaly."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    counts = []
    with attach(model, opt):
        for _ in range(STEPS):
            n = [0, 0]

            def pack(t: torch.Tensor, n: list[int] = n) -> torch.Tensor:
                n[0] += 1
                return t

            def unpack(t: torch.Tensor, n: list[int] = n) -> torch.Tensor:
                n[1] += 1
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Anomaly Detection has been enabled"
                with torch.autograd.detect_anomaly(check_nan=True):
                    loss.backward()
            opt.step()
            with torch.autograd.graph.save_on_cpu():
                F.mse_loss(model(x), y).backward()
            counts.append(tuple(n))
    return {"state": _state(model), "counts": counts}


# -- 5. nn.DataParallel on CPU ----------------------------------------------------------------
def data_parallel(attach: Attach) -> Any:
    model = nn.DataParallel(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()
    with attach(model, opt):
        for _ in range(STEPS):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    model.eval()
    return {"state": _state(model), "out": model(x).detach()}


# -- 6. dtypes and devices mid-run ------------------------------------------------------------
def dtype_changes(attach: Attach) -> Any:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    dtypes = []
    with attach(model, opt):
        for step in range(12):
            if step == 3:
                model.double()
            elif step == 6:
                model.to(torch.float32)
            elif step == 8:
                model.to(torch.bfloat16)
            elif step == 10:
                model.float()
            dtype = model[0].weight.dtype
            dtypes.append(str(dtype))
            opt.zero_grad()
            F.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
            opt.step()
    return {"state": _state(model), "dtypes": dtypes}


def dtype_change_with_adam_state(attach: Attach) -> Any:
    """Adam's state stays float32 when the model goes float64: the step raises, the same way."""
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()
    raised = []
    with attach(model, opt):
        for step in range(6):
            if step == 3:
                model.double()
                x, y = x.double(), y.double()
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            raised.append(_caught(opt.step))
    return {"state": _state(model), "raised": raised}


def meta_device_round_trip(attach: Attach) -> Any:
    """To the meta device and back (to_empty + load_state_dict), then on with a new optimizer."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    with attach(model, opt):
        for step in range(STEPS):
            if step == 3:
                saved = _state(model)
                model.to("meta")
                model.to_empty(device="cpu")
                model.load_state_dict(saved)
                opt = torch.optim.SGD(model.parameters(), lr=0.05)
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return {"state": _state(model)}


# -- 7. the user's own hooks ------------------------------------------------------------------
def _halve_grad(p: torch.Tensor) -> None:
    p.grad.mul_(0.5)


def _shrink_grads(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad.mul_(0.9)


def user_hooks(attach: Attach) -> Any:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    x, y = _data()
    seen: list[str] = []
    handles = {
        # Before attach: ours come after these.
        "out_half": model[0].register_forward_hook(lambda m, i, o: o * 0.5),
        "in_plus": model[2].register_forward_pre_hook(lambda m, a: (a[0] + 0.1,)),
    }
    outs = []
    with attach(model, opt):
        # After attach: before ours (prepend) and after ours, modifying inputs, outputs, grads.
        handles["root_first"] = model.register_forward_hook(lambda m, i, o: o * 2, prepend=True)
        handles["pre_first"] = model[0].register_forward_pre_hook(
            lambda m, a, kw: ((a[0] * 0.9,), kw), prepend=True, with_kwargs=True
        )
        handles["clamp_last"] = model[0].register_forward_hook(lambda m, i, o: o.clamp(-1, 1))
        handles["inplace"] = model[2].register_forward_hook(lambda m, i, o: o.add_(0.01))
        handles["always"] = model.register_forward_hook(
            lambda m, a, kw, o: seen.append("always"), with_kwargs=True, always_call=True
        )
        handles["bw"] = model[2].register_full_backward_hook(lambda m, gi, go: (gi[0] * 0.5,))
        handles["bw_pre"] = model[0].register_full_backward_pre_hook(lambda m, go: (go[0] * 2,))
        handles["grad"] = model[0].weight.register_hook(lambda gr: gr * 0.1)
        handles["acc"] = model[2].bias.register_post_accumulate_grad_hook(_halve_grad)
        handles["step_pre"] = opt.register_step_pre_hook(_shrink_grads)
        handles["step_post"] = opt.register_step_post_hook(lambda o, a, kw: seen.append("post"))
        for step in range(STEPS):
            if step == 3:  # the user removes some of theirs
                for name in ("out_half", "root_first", "bw", "grad", "step_pre"):
                    handles.pop(name).remove()
            if step == 5:
                for name in list(handles):
                    handles.pop(name).remove()
            opt.zero_grad()
            out = model(x)
            outs.append(out.detach())
            F.mse_loss(out, y).backward()
            opt.step()
    return {"state": _state(model), "outs": outs, "seen": seen}


def user_global_hooks(attach: Attach) -> Any:
    """Module-global hooks of the user's (nn.modules.module.register_module_forward_hook)."""
    from torch.nn.modules import module as nn_module

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    calls: list[str] = []
    with attach(model, opt):
        pre = nn_module.register_module_forward_pre_hook(
            lambda m, a: calls.append(type(m).__name__)
        )
        post = nn_module.register_module_forward_hook(
            lambda m, a, o: o * 1.5 if isinstance(m, nn.Tanh) else None
        )
        for step in range(STEPS):
            if step == 4:
                pre.remove()
                post.remove()
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return {"state": _state(model), "calls": calls}


# -- 8. torch.jit.trace / torch.jit.script of the live model ----------------------------------
def scale_output(
    module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor
) -> torch.Tensor:
    return output * 2.0


def shift_input(module: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    return (inputs[0] + 1.0,)


def jit_script_and_trace(attach: Attach) -> Any:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    got: dict[str, Any] = {}
    with attach(model, opt):
        for step in range(STEPS):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            if step in (0, 4):
                scripted = torch.jit.script(model)
                traced = torch.jit.trace(model, x)
                got[f"script{step}"] = (scripted(x).detach(), scripted.code)
                got[f"trace{step}"] = (traced(x).detach(), traced.code)
                buf = io.BytesIO()
                torch.jit.save(scripted, buf)
                buf.seek(0)
                got[f"loaded{step}"] = torch.jit.load(buf)(x).detach()
            if step == 5:  # the user's scriptable hooks are scripted with the model
                h1 = model[2].register_forward_hook(scale_output)
                h2 = model[0].register_forward_pre_hook(shift_input)
                scripted = torch.jit.script(model)
                got["hooked"] = (scripted(x).detach(), model(x).detach(), scripted.code)
                h1.remove()
                h2.remove()
            if step == 6:  # a hook that cannot be scripted: the same error
                h = model[0].register_forward_hook(lambda m, i, o: None)
                got["unscriptable"] = _caught(lambda: torch.jit.script(model))
                h.remove()
    # Training through the traced module (it shares the parameters).
    traced = torch.jit.trace(model, x)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(traced(x), y).backward()
        opt.step()
    return {"state": _state(model), "jit": got}


class Outer(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).relu()


def jit_trace_function(attach: Attach) -> Any:
    """trace of a module that calls the watched model, and torch.fx.symbolic_trace of it."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Tanh(), nn.Linear(8, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    got = []
    with attach(model, opt):
        for _ in range(4):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            traced = torch.jit.trace(Outer(model), x)
            gm = torch.fx.symbolic_trace(model)
            got.append((traced(x).detach(), traced.code, gm(x).detach(), gm.code))
    return {"state": _state(model), "got": got}


def export_live_model(attach: Attach) -> Any:
    """torch.export of the live model mid-run (its graph and outputs as plainly)."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    got = []
    with attach(model, opt):
        for step in range(4):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            if step == 2:
                exported = torch.export.export(model, (x,))
                got.append((exported.module()(x).detach(), str(exported.graph)))
    return {"state": _state(model), "got": got}


def module_rewrites(attach: Attach) -> Any:
    """What torch rewrites in a module mid-run: parametrizations (weight_norm, spectral_norm,
    which swap the module's class), the old hook-based weight_norm, pruning (a forward
    pre-hook of torch's), and their removal."""
    from torch.nn.utils import parametrizations, parametrize, prune

    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    with attach(model, opt):
        for step in range(STEPS):
            if step == 2:
                parametrizations.weight_norm(model[0])
                parametrizations.spectral_norm(model[4])
                prune.l1_unstructured(model[2], "weight", amount=0.3)
                opt.add_param_group({"params": list(model[0].parametrizations.parameters())})
            if step == 3:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # deprecated, still used
                    torch.nn.utils.weight_norm(model[2], "bias")
            if step == 5:
                parametrize.remove_parametrizations(model[0], "weight")
                prune.remove(model[2], "weight")
                torch.nn.utils.remove_weight_norm(model[2], "bias")
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return {"state": _state(model), "classes": [type(m).__name__ for m in model]}


# -- 9. state_dict round trips, deepcopy of the optimizer, load_state_dict mid-run -----------
def state_dicts(attach: Attach) -> Any:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()
    got: dict[str, Any] = {}
    with attach(model, opt):
        for step in range(10):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            if step == 2:
                saved_model = copy.deepcopy(model.state_dict())
                saved_opt = copy.deepcopy(opt.state_dict())
                opt_copy = copy.deepcopy(opt)
                got["copy_hooks"] = len(opt_copy._optimizer_step_pre_hooks)
            if step == 5:  # roll back to step 2
                model.load_state_dict(saved_model)
                opt.load_state_dict(saved_opt)
            if step == 7:  # through torch.save / torch.load
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                buf.seek(0)
                ckpt = torch.load(buf, weights_only=True)
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["opt"])
            if step == 8:  # strict load of a wrong state dict: the same error
                got["bad_load"] = _caught(lambda: model.load_state_dict({"nope": torch.zeros(1)}))
                got["bad_opt"] = _caught(
                    lambda: opt.load_state_dict({"state": {}, "param_groups": []})
                )
    # The copy of the optimizer steps its own copies of nothing: it holds the same params.
    got["copy_state"] = _opt_state(opt_copy)
    return {"state": _state(model), "opt": _opt_state(opt), "got": got}


# -- warnings: what the user sees is what they see without traindoctor ------------------------
def _library_call() -> None:
    warnings.warn("a library's deprecation", UserWarning, stacklevel=2)


def warnings_shown(attach: Attach) -> Any:
    """torch's and the user's warnings name the same lines, as often: a warning of the user's
    each step (shown once), a full backward hook that fires in backward (torch's stacklevel=5
    names the backward() line), shapes that broadcast in a loss, a scheduler stepped first; and
    under an "error" filter, the same exception from the same call."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    x, y = _data()
    model[0].register_full_backward_hook(lambda m, gi, go: None)  # x needs no grad: it warns
    with warnings.catch_warnings(record=True) as record, attach(model, opt):
        warnings.simplefilter("default")
        for step in range(STEPS):
            _library_call()
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            if step == 2:
                F.mse_loss(model(x)[:, :1], y[:, 0])  # (16, 1) against (16,): it broadcasts
            loss.backward()
            if step == 0:
                sched.step()  # before optimizer.step(): torch warns
            opt.step()
            sched.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            errors = [
                _caught(lambda: F.mse_loss(model(x), y).backward()),
                _caught(lambda: F.mse_loss(model(x)[:, :1], y[:, 0])),
            ]
        _library_call()  # once per location: not shown again
    shown = [(w.filename, w.lineno, w.category.__name__, str(w.message)[:50]) for w in record]
    assert all(f == __file__ for f, *_ in shown), shown
    return {"state": _state(model), "shown": shown, "errors": errors}


PROGRAMS: list[Callable[[Attach], Any]] = [
    maml,
    per_sample_grads,
    func_grad_loop,
    wgan_gp,
    grad_norm_penalty,
    _checkpointing(reentrant=True),
    _checkpointing(reentrant=False),
    _checkpointing(reentrant=True, sequential=True),
    _checkpointing(reentrant=False, sequential=True),
    multi_backward,
    saved_tensor_hooks,
    data_parallel,
    dtype_changes,
    dtype_change_with_adam_state,
    meta_device_round_trip,
    user_hooks,
    user_global_hooks,
    jit_script_and_trace,
    jit_trace_function,
    export_live_model,
    module_rewrites,
    state_dicts,
    warnings_shown,
]


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_pattern_gives_the_same_result_attached(program, tmp_path):
    check(program, tmp_path)


SCRIPT = """
import importlib.util
import sys

import torch

spec = importlib.util.spec_from_file_location("user_patterns", {path!r})
patterns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(patterns)
results = {{}}
for program in patterns.PROGRAMS:
    torch.manual_seed(0)
    results[program.__name__] = patterns._caught(lambda: program(patterns._nothing))
torch.save(results, sys.argv[1])
"""


def test_every_pattern_gives_the_same_result_under_traindoctor_run(tmp_path):
    """All the programs in one script, run plainly and under `traindoctor run`."""
    from .cli.conftest import python, run_all, write
    from .cli.conftest import td as traindoctor

    write(tmp_path, "patterns.py", SCRIPT.format(path=__file__))
    res = run_all(
        {
            "plain": lambda: python(tmp_path, "patterns.py", "plain.pt"),
            "td": lambda: traindoctor(tmp_path, "run", "patterns.py", "td.pt"),
        }
    )
    assert res["plain"].rc == 0, res["plain"]
    assert res["td"].rc == 0, res["td"]
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    watched = torch.load(tmp_path / "td.pt", weights_only=False)
    assert list(plain) == [p.__name__ for p in PROGRAMS]
    for name, result in plain.items():
        assert isinstance(result, dict), (name, result)
    _same(plain, watched)
    findings = res["td"].findings()
    assert findings["internal_errors"] == [], findings["internal_errors"]
    assert findings["steps"] >= STEPS  # numbered by the first optimizer (MAML's)


def test_scripting_puts_our_hooks_back_exactly_and_the_doctor_goes_on(tmp_path):
    model = _mlp()
    user = model[0].register_forward_hook(scale_output)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    with td.watch(model, opt, console=False, out_dir=tmp_path, budget=1.0) as doc:
        for _ in range(6):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            before = {
                (i, attr): (d, list(d.items()))
                for i, m in enumerate(model.modules())
                for attr in vars(m)
                if attr.endswith("hooks") or "hooks_" in attr
                for d in [getattr(m, attr)]
            }
            assert any(
                isinstance(h, CopySafeHook) for _, items in before.values() for _, h in items
            )
            scripted = torch.jit.script(model)
            # The user's hook is in the ScriptModule, ours are not.
            assert [h.name for h in scripted._c.getattr("0")._get_forward_hooks()] == [
                "scale_output"
            ]
            after = {
                (i, attr): (d, list(d.items()))
                for i, m in enumerate(model.modules())
                for attr in vars(m)
                if attr.endswith("hooks") or "hooks_" in attr
                for d in [getattr(m, attr)]
            }
            assert after.keys() == before.keys()
            for key, (d, items) in before.items():
                assert after[key][0] is d and after[key][1] == items, key
    assert doc.step == 7 and not doc.guard.errors
    user.remove()
