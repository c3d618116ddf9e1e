"""timeline.jsonl streamed as the run goes (timeline_store.py): what a run writes step by step
loads into the same Timeline as the one held in memory at close; format 1 still loads; a file
cut short by a kill loads with a note."""

from __future__ import annotations

import json
import os

import pytest
import torch

import traindoctor as td
from traindoctor.scenarios import get
from traindoctor.scenarios.demo import run_scenario
from traindoctor.timeline import Timeline
from traindoctor.timeline_store import TimelineWriter

from ._loop import OPTIMIZERS, make_model, train


def _norm(tl: Timeline) -> dict:
    """What rules can read of a timeline, as JSON (what both formats can hold)."""
    return json.loads(
        json.dumps(
            {
                "facts": tl.facts,
                "last_step": tl.last_step,
                "signals": {n: tl.series(n) for n in tl.signal_names()},
                "events": tl.events(),
            },
            default=str,
        )
    )


def _format1(tl: Timeline, path) -> Timeline:
    path.write_text("".join(line + "\n" for line in tl.to_jsonl_lines()))
    return Timeline.from_jsonl(path)


@pytest.mark.parametrize("name", ["zero_grad_missing", "nan_log_prob_zero", "hand_sgd"])
def test_a_streamed_scenario_loads_as_the_timeline_held_at_close(name, tmp_path):
    scenario = get(name)
    if scenario.missing:
        pytest.skip(f"{name} needs {', '.join(scenario.missing)}")
    report = run_scenario(scenario, out_dir=tmp_path, watch=True)
    streamed = report.run_dir / "timeline.jsonl"
    first = streamed.read_text().splitlines()[0]
    assert json.loads(first) == {"type": "stream", "version": 2}
    loaded = Timeline.from_jsonl(streamed)
    assert loaded.ended and not loaded.load_notes
    assert _norm(loaded) == _norm(report.timeline)
    assert _norm(loaded) == _norm(_format1(report.timeline, tmp_path / "whole.jsonl"))


def _doctor(tmp_path):
    model = make_model()
    opt = OPTIMIZERS["adamw"](model)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    return model, opt, doc


def test_the_run_directory_holds_the_steps_before_close_and_close_completes_it(tmp_path):
    model, opt, doc = _doctor(tmp_path)
    train(model, opt, 30, doc=doc, log=True)
    path = tmp_path / doc.run_id / "timeline.jsonl"
    mid = Timeline.from_jsonl(path)  # as a killed run would leave it
    assert not mid.ended
    # Written with each read-back (every 25 steps, no host sync in between): a kill loses
    # the steps since.
    assert mid.last_step == 25
    assert mid.series("loss.train")[-1][0] >= 24
    inode = os.stat(path).st_ino
    size = path.stat().st_size
    report = doc.close()
    assert os.stat(path).st_ino == inode, "close() appends; it does not write the file again"
    assert path.stat().st_size > size
    done = Timeline.from_jsonl(path)
    assert done.ended
    assert _norm(done) == _norm(report.timeline)
    assert not [e for e in doc.guard.errors if "stream" in e.where]


def test_values_that_do_not_change_are_written_once_and_read_back_every_step(tmp_path):
    tl = Timeline()
    tl.facts["run_id"] = "r"
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    params = {f"layer{i}.weight": 0.5 for i in range(6)}
    for step in range(1, 41):
        tl.record(step, "optim.lr", [0.01])  # constant: a set id a step
        tl.record(step, "loss.site", "train.py:12")
        tl.record(step, "loss.train", 1.0 / step)
        tl.record(step, "params.norm", {k: v * step for k, v in params.items()})  # keyed
        tl.append(step, "loss.backward", 1.0)
        tl.last_step = step
        writer.flush(full=step % 10 == 0)
    text = (tmp_path / "timeline.jsonl").read_text()
    assert text.count("train.py:12") == 1
    assert text.count("layer3.weight") == 1
    loaded = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert _norm(loaded) == _norm(tl)
    # Each step's value is its own object, as in memory.
    lrs = loaded.series("optim.lr")
    lrs[0][1].append(5)
    assert loaded.series("optim.lr")[1][1] == [0.01]


def test_late_writes_fact_changes_and_updated_events_are_kept(tmp_path):
    tl = Timeline()
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    tl.facts.update(a=1, b={"x": 1})
    tl.record(1, "grads.norm", 1.0, key="w")
    tl.event(1, "grad_on_non_float", param="w", count=1)
    tl.last_step = 1
    writer.flush(full=True)
    tl.record(1, "grads.norm", 2.0, key="b")  # a key added to a step already written
    tl.record(2, "loss.train", float("nan"))
    tl.events("grad_on_non_float")[0]["count"] += 1  # a probe's repeat count
    tl.facts["b"]["x"] = 2  # mutated in place
    del tl.facts["a"]
    tl.last_step = 2
    writer.flush(full=False)  # the facts are compared on full flushes only
    mid = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert mid.series("grads.norm") == [(1, {"w": 1.0, "b": 2.0})]
    assert mid.facts == {"a": 1, "b": {"x": 1}}
    writer.finish()
    done = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert done.ended
    assert _norm(done) == _norm(tl)
    assert done.events()[0]["count"] == 2


def test_a_truncated_last_line_is_skipped_with_a_note(tmp_path):
    tl = Timeline()
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    for step in (1, 2):
        tl.record(step, "loss.train", float(step))
        tl.last_step = step
        writer.flush()
    path = tmp_path / "timeline.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"type":"step","step":3,"signals":{"loss.tr')  # killed mid-write
    loaded = Timeline.from_jsonl(path)
    assert loaded.series("loss.train") == [(1, 1.0), (2, 2.0)]
    assert not loaded.ended
    assert len(loaded.load_notes) == 1 and "cut short" in loaded.load_notes[0]
    # Anywhere else, a bad line is an error; and format 1, written whole, is never cut short.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{bad", *lines[1:-1]]) + "\n")
    with pytest.raises(ValueError, match="not a timeline record"):
        Timeline.from_jsonl(path)
    whole = tmp_path / "whole.jsonl"
    whole.write_text("".join(line + "\n" for line in tl.to_jsonl_lines()) + '{"type":"st')
    with pytest.raises(ValueError, match="not a timeline record"):
        Timeline.from_jsonl(whole)


def test_format1_files_still_load(tmp_path):
    model, opt, doc = _doctor(tmp_path)
    train(model, opt, 5, doc=doc, log=True)
    report = doc.close()
    old = _format1(report.timeline, tmp_path / "old.jsonl")
    assert old.ended and _norm(old) == _norm(report.timeline)


def test_a_stream_that_cannot_write_falls_back_to_the_whole_write_at_close(tmp_path, monkeypatch):
    def disk_full(self, lines):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TimelineWriter, "_write", disk_full)
    model, opt, doc = _doctor(tmp_path)
    train(model, opt, 30, doc=doc)
    assert doc.timeline.stream.broken and doc.timeline.take_changes() == set()
    monkeypatch.undo()  # the disk has room again at close
    report = doc.close()
    assert report.write_error is None
    assert not doc.guard.errors, "a write failure is not an internal error"
    path = tmp_path / doc.run_id / "timeline.jsonl"
    assert json.loads(path.read_text().splitlines()[0])["type"] == "facts"  # format 1
    assert _norm(Timeline.from_jsonl(path)) == _norm(report.timeline)


def test_streaming_leaves_training_bit_identical(tmp_path):
    def run(watch: bool) -> list[torch.Tensor]:
        model = make_model()
        opt = OPTIMIZERS["sgd-momentum"](model)
        doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watch else None
        train(model, opt, 30, doc=doc, log=watch)
        if doc is not None:
            doc.close()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)


def test_many_floats_are_packed_and_read_back_exactly(tmp_path):
    tl = Timeline()
    writer = TimelineWriter(tl, tmp_path / "timeline.jsonl")
    names = [f"blocks.{i}.weight" for i in range(40)]
    single = torch.randn(40, generator=torch.Generator().manual_seed(0)).tolist()  # float32s
    tl.record(1, "grads.norm", dict(zip(names, single, strict=True)))
    tl.record(2, "grads.norm", dict(zip(names, [v / 3 for v in single], strict=True)))  # float64
    tl.record(3, "grads.norm", dict(zip(names, [float("nan"), float("inf"), *single[2:]])))
    tl.record(4, "grads.norm", dict(zip(names, [None, *single[1:]])))  # not all floats: text
    writer.finish()
    text = (tmp_path / "timeline.jsonl").read_text()
    assert text.count('"f4:') == 1 and text.count('"f8:') == 2
    loaded = Timeline.from_jsonl(tmp_path / "timeline.jsonl")
    assert _norm(loaded) == _norm(tl)
    assert loaded.series("grads.norm")[0][1] == tl.series("grads.norm")[0][1]  # bit for bit


def test_attach_writes_the_run_directory_before_the_first_step(tmp_path):
    model, opt, doc = _doctor(tmp_path)  # killed now (OOM in the first forward): still a run
    early = Timeline.from_jsonl(tmp_path / doc.run_id / "timeline.jsonl")
    assert not early.ended and early.last_step == 0
    assert early.facts["models"] == {"<model>": "Sequential"}
    doc.close()
