"""The one patch mechanism (_patching.py): reference-counted, exact restore (inherited attributes
deleted again), someone else's patch on top kept, nothing half-installed after an error."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import traindoctor
from traindoctor import _patching
from traindoctor._patching import MISSING, Patch, PatchSet, acquire, patched_targets, release


class Base:
    def inherited(self) -> str:
        return "base"


class Owner(Base):
    def own(self) -> str:
        return "own"


ORIGINAL_OWN = Owner.__dict__["own"]


def _wrapper(tag: str):
    def make(original):
        def wrapped(self):
            return f"{tag}({original(self)})"

        return wrapped

    return make


@pytest.fixture(autouse=True)
def _clean():
    yield
    assert not patched_targets(), "a test left a patch installed"
    assert Owner.__dict__["own"] is ORIGINAL_OWN
    assert "inherited" not in Owner.__dict__


def test_install_and_exact_restore():
    own, inherited = Patch(Owner, "own", _wrapper("a")), Patch(Owner, "inherited", _wrapper("a"))
    acquire(own)
    acquire(inherited)
    assert Owner().own() == "a(own)" and Owner().inherited() == "a(base)"
    entries = {(e.attribute, e.before) for e in patched_targets()}
    assert entries == {("own", ORIGINAL_OWN), ("inherited", MISSING)}
    assert release(own) and release(inherited)
    assert Owner.__dict__["own"] is ORIGINAL_OWN
    assert "inherited" not in Owner.__dict__  # inherited again, not a copy in Owner's dict


def test_reference_counted():
    patch = Patch(Owner, "own", _wrapper("a"))
    acquire(patch)
    acquire(patch)  # a second doctor: installed once, not wrapped twice
    assert Owner().own() == "a(own)"
    assert not release(patch)  # the first to close: still installed for the other
    assert Owner().own() == "a(own)"
    assert release(patch)
    assert not release(patch)  # not held any more: nothing happens


def test_patch_set_is_planned_at_first_acquire():
    calls = []

    def plan():
        calls.append(1)
        return [Patch(Owner, "own", _wrapper("s")), Patch(Owner, "inherited", _wrapper("s"))]

    key = PatchSet("both", plan)
    acquire(key)
    acquire(key)
    assert len(calls) == 1 and len(patched_targets()) == 2
    release(key)
    assert _patching.is_held(key)
    release(key)
    assert not _patching.is_held(key)


def test_someone_elses_patch_on_top_stays():
    patch = Patch(Owner, "own", _wrapper("ours"))
    acquire(patch)
    ours = Owner.__dict__["own"]

    def theirs(self):
        return "theirs:" + ours(self)

    Owner.own = theirs
    release(patch)
    assert Owner.__dict__["own"] is theirs  # not clobbered
    assert not patched_targets()
    Owner.own = ORIGINAL_OWN


@pytest.mark.parametrize("first", ["lower", "upper"])
def test_two_of_ours_stacked_restore_in_either_order(first):
    lower, upper = Patch(Owner, "own", _wrapper("l")), Patch(Owner, "own", _wrapper("u"))
    acquire(lower)
    acquire(upper)
    assert Owner().own() == "u(l(own))"
    order = [lower, upper] if first == "lower" else [upper, lower]
    for key in order:
        release(key)
    assert Owner.__dict__["own"] is ORIGINAL_OWN


def test_error_while_installing_leaves_nothing_half_patched():
    def boom(original):
        raise RuntimeError("make failed")

    key = PatchSet(
        "half", lambda: [Patch(Owner, "own", _wrapper("a")), Patch(Owner, "inherited", boom)]
    )
    with pytest.raises(RuntimeError, match="make failed"):
        acquire(key)
    assert not _patching.is_held(key)
    # A missing (non-optional) attribute fails the same way, after the first was installed.
    key = PatchSet(
        "missing", lambda: [Patch(Owner, "own", _wrapper("a")), Patch(Owner, "nope", boom)]
    )
    with pytest.raises(AttributeError):
        acquire(key)
    assert not _patching.is_held(key)


def test_error_in_plan_installs_nothing():
    def plan():
        raise ImportError("no such library")

    key = PatchSet("plan", plan)
    with pytest.raises(ImportError):
        acquire(key)
    assert not _patching.is_held(key)
    assert not release(key)


def test_optional_and_declined_patches_install_nothing():
    absent = Patch(Owner, "absent", _wrapper("a"), optional=True)
    declined = Patch(Owner, "own", lambda original: None)  # "ours already"
    acquire(absent)
    acquire(declined)
    assert not patched_targets() and "absent" not in Owner.__dict__
    assert Owner.__dict__["own"] is ORIGINAL_OWN
    assert release(absent) and release(declined)


def test_works_on_module_attributes():
    import types

    module = types.ModuleType("fake_metrics")
    module.score = lambda y: "score"
    original = module.score
    patch = Patch(module, "score", lambda fn: lambda y: "wrapped " + fn(y))
    acquire(patch)
    assert module.score(0) == "wrapped score"
    release(patch)
    assert module.score is original


# -- no patch outside the mechanism -----------------------------------------------------------
# The trainers' methods wrapped for one run (transformers, Ultralytics) go through Patch too;
# _warnings.py swaps warnings.showwarning for the span of one call and the runner sets the
# script's sys.argv: not patches of a library.
# _release.py empties attributes of traindoctor's own objects at close (never a library's).
SETATTR_ALLOWED = {"_patching.py", "_release.py"}
ASSIGN_ALLOWED = {
    # After the report of `traindoctor run --json`: the script's threads and atexit handlers
    # print to stderr, so that stdout carries the JSON alone (the process ends next).
    ("cli.py", "sys.stdout"),
    ("_warnings.py", "warnings.showwarning"),
    ("integrations/runner.py", "sys.argv"),
    # The live status line wraps the script's streams and puts back only its own wrapper.
    ("progress.py", "sys.stdout"),
    ("progress.py", "sys.stderr"),
}


def _imported_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_process_wide_patches_go_through_the_patching_module():
    """No `setattr(` and no assignment to an attribute of an imported module or class
    (`torch.Tensor.backward = ...`, `F.mse_loss = ...`, `DataLoader.__iter__ = ...`) outside
    _patching.py: a new patch uses Patch/PatchSet, so it is restored and tested with the rest."""
    src = Path(traindoctor.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("scenarios/"):
            continue  # the users' training code, bugs included
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = _imported_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr")
                and rel not in SETATTR_ALLOWED
            ):
                found.append(f"{rel}:{node.lineno} {node.func.id}(")
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and _root(target) in imported
                    and (rel, ast.unparse(target)) not in ASSIGN_ALLOWED
                ):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(target)} =")
    assert not found, found
