"""_mode_stack.OursPaused: our modes off while our own code runs, the user's left in place."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from traindoctor import _mode_stack
from traindoctor._mode_stack import OursPaused


class _Counting(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _stack() -> list[object]:
    n = torch._C._len_torch_function_stack()
    return [torch._C._get_function_stack_at(i) for i in range(n)]


def test_pause_takes_ours_off_and_puts_them_back_in_order():
    a, b, user = _Counting(), _Counting(), _Counting()
    p = torch.nn.Parameter(torch.ones(2))
    with user:
        _mode_stack.push_bottom(b)
        _mode_stack.push_bottom(a)
        try:
            assert _stack() == [a, b, user]
            with OursPaused():
                assert _stack() == [user]
                with OursPaused():  # nested: nothing of ours left to take
                    assert _stack() == [user]
                p.grad  # noqa: B018
            assert _stack() == [a, b, user]
            assert (a.calls, b.calls, user.calls) == (0, 0, 1)  # the user's mode saw the read
        finally:
            _mode_stack.remove(a)
            _mode_stack.remove(b)
    assert _stack() == []


def test_a_mode_removed_during_the_pause_stays_off():
    a, b = _Counting(), _Counting()
    _mode_stack.push_bottom(a)
    _mode_stack.push_bottom(b)
    try:
        with OursPaused():
            _mode_stack.remove(a)  # the cut tracker stopped by a handler inside the pause
        assert _stack() == [b]
    finally:
        _mode_stack.remove(a)
        _mode_stack.remove(b)
    assert _stack() == []


def test_pause_without_modes_and_with_only_the_users():
    user = _Counting()
    with OursPaused():
        assert _stack() == []
    with user, OursPaused():
        assert _stack() == [user]
    assert _stack() == []
