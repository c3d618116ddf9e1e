"""timeline.jsonl on disk: appended as the run goes (crash-safe), and read back.

The writer appends what changed since its last flush whenever the device values are read back
(the first steps, then every 25 steps: steps.py), so a run killed with SIGKILL or by the
out-of-memory killer leaves on disk every step up to its last read-back, and close() only
completes the file. Its records (format 2; format 1, one `facts` line then one `step` line per
step and the events, written whole at close, still loads):

    {"type": "stream", "version": 2}                  first line
    {"type": "fact", "key": k, "value": v}            a fact set or changed ("removed": true)
    {"type": "keys", "id": i, "keys": [...]}          a key list, declared once
    {"type": "same", "id": i, "names": [...]}         a set of signal names, declared once
    {"type": "step", "step": s, "signals": {name: value},
     "keyed": {name: [keys id, [values] or "f4:"/"f8:" + base64]}, "same": i, "last_step": n}
    {"type": "event", "step": s, "kind": k, ...}      as they come
    {"type": "event_update", "index": i, "event": {...}}   an event changed after it was written
    {"type": "progress", "last_step": n}              steps closed with nothing recorded
    {"type": "end", "last_step": n}                   close() completed the file

A step's signal is written again whole when it changes later (the reader keeps the last one);
`same: i` restores, for each name of set i, the last value written for that name (the lr, a
loss's site: values that rarely change cost a few bytes a step); per-parameter dicts name their
keys by a key list declared once. The reader skips a truncated last line (a kill mid-write).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 2
# A dict with at least this many string keys is written as a key-list id and its values.
KEYED_MIN = 4
# Its values, when there are at least this many floats, as packed bytes (base64).
PACKED_MIN = 16
# Facts are compared on the first flushes and on every FACTS_EVERY-th after (and at close).
FACTS_EVERY = 10
_MISSING = object()
_STR = {str}


# One encoder for every record: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
_encode_str = json.encoder.encode_basestring_ascii  # what the encoder writes for a str


def _dumps(value: Any) -> str:
    # Scalars, most of a step's records, without the encoder's machinery (same text).
    kind = type(value)
    if kind is float and value - value == 0.0:  # finite: NaN and inf go to the encoder
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return _encode_str(value)
    return _ENCODER.encode(value)


class TimelineWriter:
    """Appends one Timeline's changes to `path`. Never raises into the run: a failure (disk
    full, permissions) marks it `broken`, and close() then writes the file whole, as before."""

    def __init__(self, timeline: Any, path: Path) -> None:
        self.timeline = timeline
        self.path = Path(path)
        self.broken: str | None = None
        self.finished = False
        self._fh: Any = None
        # signal -> its last value written (a shallow copy: the next step's is compared to it
        # without encoding it, the cost of a step's records is in the encoding)
        self._last: dict[str, Any] = {}
        self._names: dict[str, str] = {}  # signal -> its name encoded
        self._keys: dict[tuple[str, ...], int] = {}
        self._same: dict[tuple[str, ...], int] = {}
        self._facts: dict[str, str] = {}
        self._events = 0  # events written
        self._event_lines: list[int] = []  # hash of each written event's line: later changes
        self._last_step: int | None = None
        self._flushes = 0
        self.bytes = 0
        # A process forked from this one (hogwild workers by torch.multiprocessing's fork, a
        # fork Pool) inherits this writer and its open file, offset shared: what it records
        # must not go into this run's file (the parent's steps and the children's interleaved).
        self._pid = os.getpid()
        timeline.track_changes()

    @property
    def ok(self) -> bool:
        if os.getpid() != self._pid:
            # A forked child's copy: it writes nothing, so it tracks no changes either.
            self.finished = True
            self.timeline.track_changes(False)
        return self.broken is None and not self.finished

    def flush(self, *, full: bool | None = None) -> None:
        """Append the changes since the last flush. The facts are mutated in place, so only a
        comparison (an encoding of all of them) finds their changes: `full` compares them, by
        default on the first few flushes and every FACTS_EVERY-th after (they settle early)."""
        if not self.ok:
            return
        try:
            lines: list[str] = []
            if self._fh is None:
                lines.append(_dumps({"type": "stream", "version": FORMAT}))
            if full is None:
                full = self._flushes < FACTS_EVERY or self._flushes % FACTS_EVERY == 0
            self._flushes += 1
            if full or self._fh is None:
                self._fact_lines(lines)
            self._step_lines(lines)
            self._new_event_lines(lines)
            self._write(lines)
        except OSError as err:  # disk full, permissions: close() writes the file whole
            self._stop(err)
        except BaseException as err:
            self._stop(err)
            raise

    def finish(self) -> None:
        """close(): the last changes, events changed since they were written, the end mark."""
        if not self.ok:
            return
        self.flush(full=True)
        if not self.ok:
            return
        try:
            lines: list[str] = []
            self._changed_event_lines(lines)
            lines.append(_dumps({"type": "end", "last_step": self.timeline.last_step}))
            self._write(lines)
            self._fh.close()
            self.finished = True
            self.timeline.track_changes(False)
        except OSError as err:
            self._stop(err)
        except BaseException as err:
            self._stop(err)
            raise

    def _stop(self, err: BaseException) -> None:
        self.broken = f"{type(err).__name__}: {err}"
        self.timeline.track_changes(False)  # nothing will take them: no growing set
        if self._fh is not None:
            with contextlib.suppress(Exception):
                self._fh.close()

    def _write(self, lines: list[str]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Buffered; flushed to the OS once per call (no fsync: a SIGKILL keeps what the
            # kernel has, and an fsync per step would cost more than the step).
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        if lines:
            text = "\n".join(lines) + "\n"
            self._fh.write(text)
            self.bytes += len(text)
        self._fh.flush()

    # -- records ----------------------------------------------------------------------------
    def _fact_lines(self, lines: list[str]) -> None:
        facts, written = self.timeline.facts, self._facts
        for key, value in facts.items():
            enc = _dumps(value)
            if written.get(key) != enc:
                written[key] = enc
                lines.append(f'{{"type":"fact","key":{_dumps(key)},"value":{enc}}}')
        for key in [k for k in written if k not in facts]:
            del written[key]
            lines.append(_dumps({"type": "fact", "key": key, "removed": True}))

    def _step_lines(self, lines: list[str]) -> None:
        tl = self.timeline
        by_step: dict[int, list[str]] = {}
        for name, step in tl.take_changes():
            by_step.setdefault(step, []).append(name)
        last_step = tl.last_step
        for step in sorted(by_step):
            plain: list[str] = []
            keyed: list[str] = []
            same: list[str] = []
            for name in sorted(by_step[step]):
                value = tl.get(step, name, _MISSING)
                if value is _MISSING:
                    continue
                last = self._last.get(name, _MISSING)
                # Equal and of the same type (1 and 1.0 are equal, not the same record).
                if type(last) is type(value) and last == value:
                    same.append(name)
                    continue
                self._last[name] = _shallow(value)
                enc, is_keyed = self._encode(value, lines)
                key = self._names.get(name)
                if key is None:
                    key = self._names[name] = _dumps(name)
                (keyed if is_keyed else plain).append(f"{key}:{enc}")
            if not (plain or keyed or same):
                continue
            parts = [f'{{"type":"step","step":{step},"signals":{{{",".join(plain)}}}']
            if keyed:
                parts.append(f',"keyed":{{{",".join(keyed)}}}')
            if same:
                parts.append(f',"same":{self._declare(self._same, tuple(same), "names", lines)}')
            if self._last_step != last_step:
                self._last_step = last_step
                parts.append(f',"last_step":{last_step}')
            lines.append("".join(parts) + "}")
        if self._last_step != last_step:
            self._last_step = last_step
            lines.append(f'{{"type":"progress","last_step":{last_step}}}')

    def _encode(self, value: Any, lines: list[str]) -> tuple[str, bool]:
        # Every key a str, checked in C (a generator cost one Python call per key: 31,000 a
        # structural step on a model of 10,000 tensors).
        if type(value) is dict and len(value) >= KEYED_MIN and set(map(type, value)) == _STR:
            kid = self._declare(self._keys, tuple(value), "keys", lines)
            values = list(value.values())
            return f"[{kid},{_packed(values) or _dumps(values)}]", True
        return _dumps(value), False

    @staticmethod
    def _declare(
        table: dict[tuple[str, ...], int], names: tuple[str, ...], what: str, lines: list[str]
    ) -> int:
        found = table.get(names)
        if found is None:
            found = table[names] = len(table)
            kind = "keys" if what == "keys" else "same"
            lines.append(_dumps({"type": kind, "id": found, what: list(names)}))
        return found

    def _new_event_lines(self, lines: list[str]) -> None:
        for event in self.timeline.events_from(self._events):
            line = _dumps({"type": "event", **event})
            self._event_lines.append(hash(line))
            lines.append(line)
            self._events += 1

    def _changed_event_lines(self, lines: list[str]) -> None:
        # A probe may update an event it recorded (a repeat count): written again at close.
        for index, event in enumerate(self.timeline.events_from(0)[: self._events]):
            if hash(_dumps({"type": "event", **event})) != self._event_lines[index]:
                lines.append(_dumps({"type": "event_update", "index": index, "event": event}))


def _packed(values: list[Any]) -> str | None:
    """Many floats as base64 of their float32 bytes when each is exactly a float32 (read back
    from a float32 tensor: 4 bytes for ~20 characters of text), else of float64; exact either
    way. None when they are not all floats (the text list then)."""
    if len(values) < PACKED_MIN or set(map(type, values)) != {float}:
        return None
    try:
        packed = array("f", values)
    except OverflowError:  # beyond float32's range
        packed = None
    kind = "f4"
    if packed is None or packed.tolist() != values:  # also with a NaN: float64 keeps it
        packed, kind = array("d", values), "f8"
    if sys.byteorder != "little":  # written little-endian
        packed.byteswap()
    return f'"{kind}:{base64.b64encode(packed.tobytes()).decode()}"'


def _unpacked(values: Any) -> list[Any]:
    if isinstance(values, str):
        kind, data = values.split(":", 1)
        packed = array({"f4": "f", "f8": "d"}[kind])
        packed.frombytes(base64.b64decode(data))
        if sys.byteorder != "little":
            packed.byteswap()
        return packed.tolist()
    return values


def _shallow(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return list(value)
    if kind is dict:
        return dict(value)
    return value


@dataclass
class Loaded:
    """What a timeline.jsonl holds, for Timeline.from_jsonl to build itself from."""

    facts: dict[str, Any] = field(default_factory=dict)
    last_step: int = 0
    signals: dict[str, dict[int, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    streamed: bool = False  # format 2: appended as the run went
    ended: bool = True  # format 2 without the end mark: the run never closed (killed)
    notes: list[str] = field(default_factory=list)


# A sink compacts what it holds after every this many step records (timeline_retention.py).
COMPACT_EVERY = 1000


def read_timeline(path: Path, sink: Any = None) -> Loaded:
    """Both formats, line by line (a long run's file is not held whole). A last line cut
    short (a kill mid-write) is skipped with a note; a bad line anywhere else is an error
    (ValueError). With a `sink` (a Timeline), the signals go to its `record()` as they are
    read, and its `compact()` runs every COMPACT_EVERY steps, so a run of 10^6 steps loads in
    the memory the live run held; `Loaded.signals` then stays empty."""
    out = Loaded()
    reader = _Reader(out, sink)
    pending: tuple[int, str] | None = None  # a line is known to be the last only at the end
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if pending is not None:
                reader.read(_record(path, *pending))
            pending = (lineno, line)
    if pending is not None:
        try:
            reader.read(_record(path, *pending))
        except ValueError:
            if not out.streamed:  # format 1 is written whole: never cut short
                raise
            out.notes.append(
                f"{path}:{pending[0]}: the last line is cut short (the run was killed "
                "while writing it); it was skipped"
            )
    if out.streamed and not reader.saw_end:
        out.ended = False
    if sink is not None:
        sink.compact()
    for name, data in out.signals.items():
        out.signals[name] = dict(sorted(data.items()))
    return out


def _record(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        raise ValueError(f"{path}:{lineno}: not a timeline record ({msg})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path}:{lineno}: not a timeline record (not a JSON object)")
    return rec


class _Reader:
    def __init__(self, out: Loaded, sink: Any = None) -> None:
        self.out = out
        self.sink = sink
        self.steps_read = 0
        self.keys: dict[int, list[str]] = {}
        self.same: dict[int, list[str]] = {}
        self.last: dict[str, Any] = {}  # signal -> its last value read (for `same`)
        self.saw_end = False
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "facts": self._facts,
            "stream": self._stream,
            "fact": self._fact,
            "keys": lambda rec: self.keys.__setitem__(int(rec["id"]), list(rec["keys"])),
            "same": lambda rec: self.same.__setitem__(int(rec["id"]), list(rec["names"])),
            "step": self._step,
            "event": self._event,
            "event_update": self._event_update,
            "progress": self._progress,
            "end": self._end,
        }

    def read(self, rec: dict[str, Any]) -> None:
        handler = self.handlers.get(rec.pop("type", None))
        if handler is not None:
            handler(rec)

    def _facts(self, rec: dict[str, Any]) -> None:  # format 1: all the facts at once
        self.out.facts = rec.get("facts", {})
        self.out.last_step = rec.get("last_step", 0)

    def _stream(self, rec: dict[str, Any]) -> None:
        self.out.streamed = True

    def _fact(self, rec: dict[str, Any]) -> None:
        if rec.get("removed"):
            self.out.facts.pop(rec["key"], None)
        else:
            self.out.facts[rec["key"]] = rec.get("value")

    def _set(self, name: str, step: int, value: Any) -> None:
        if self.sink is None:
            self.out.signals.setdefault(name, {})[step] = value
        else:
            self.sink.record(step, name, value)
        self.last[name] = value

    def _step(self, rec: dict[str, Any]) -> None:
        step = int(rec["step"])
        for name, value in (rec.get("signals") or {}).items():
            self._set(name, step, value)
        for name, (kid, values) in (rec.get("keyed") or {}).items():
            self._set(name, step, dict(zip(self.keys[int(kid)], _unpacked(values), strict=True)))
        if "same" in rec:
            for name in self.same[int(rec["same"])]:
                self._set(name, step, _copy(self.last[name]))
        self._progress(rec)
        self.steps_read += 1
        if self.sink is not None and self.steps_read % COMPACT_EVERY == 0:
            self.sink.compact()

    def _progress(self, rec: dict[str, Any]) -> None:
        if "last_step" in rec:
            self.out.last_step = int(rec["last_step"])

    def _end(self, rec: dict[str, Any]) -> None:
        self.saw_end = True
        self._progress(rec)

    def _event(self, rec: dict[str, Any]) -> None:
        self.out.events.append(rec)

    def _event_update(self, rec: dict[str, Any]) -> None:
        index = int(rec["index"])
        if 0 <= index < len(self.out.events):
            self.out.events[index] = rec["event"]


def _copy(value: Any) -> Any:
    # Each step gets its own container, as in memory: a reader that mutates one step's value
    # must not change the others.
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return value
