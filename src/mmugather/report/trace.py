"""Timelines of a run as Chrome Trace Event JSON, loadable in Perfetto (ui.perfetto.dev) and chrome://tracing.

One track per simulated CPU (pid 1, tid = CPU number, named by thread_name metadata); counters are
process-wide tracks. Timestamps are simulated nanoseconds written as microseconds ("ts", a float).
Events are written in the order the hooks were called; viewers sort by time, and `validate_trace` checks
what they rely on: each track's slices nest and its timestamps never go back. Several runs go in one file
as one process (pid) each, with flow ids unique across the file (`first_flow_id`, `write_traces`).
sim/tracing.py's `attach_trace` feeds a ChromeTrace from a simulation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PID = 1
_REQUIRED = {
    "B": ("name", "ts", "pid", "tid"),
    "E": ("ts", "pid", "tid"),
    "X": ("name", "ts", "dur", "pid", "tid"),
    "i": ("name", "ts", "pid", "tid"),
    "C": ("name", "ts", "pid", "args"),
    "s": ("name", "id", "ts", "pid", "tid"),
    "f": ("name", "id", "ts", "pid", "tid"),
    "M": ("name", "pid", "args"),
}


def _us(t_ns: int) -> float:
    return t_ns / 1000


class ChromeTrace:
    """Collects events from the engine's hooks; `write` saves them as {"traceEvents": [...]}."""

    def __init__(self, machine_name: str = "simulated machine", *, pid: int = PID, first_flow_id: int = 1) -> None:
        self.pid = pid
        self.events: list[dict] = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": machine_name}}]
        self._cpus: set[int] = set()
        self._first_flow = first_flow_id
        self._flows = first_flow_id - 1

    @property
    def next_flow_id(self) -> int:
        """The first flow id not used yet: `first_flow_id` of the next trace written to the same file."""
        return self._flows + 1

    def rebase(self, pid: int, first_flow_id: int, tid_shift: int) -> None:
        """Renumber these events as process `pid` with flow ids from `first_flow_id`, every tid moved by
        `tid_shift`: what the trace would hold had it been made with those (a run traced alone, then
        written to a file of several)."""
        flow_shift = first_flow_id - self._first_flow
        for e in self.events:
            e["pid"] = pid
            if "tid" in e:
                e["tid"] += tid_shift
            if e["ph"] in "sf":
                e["id"] += flow_shift
        self.pid = pid
        self._cpus = {t + tid_shift for t in self._cpus}
        self._first_flow, self._flows = first_flow_id, self._flows + flow_shift

    def name_track(self, tid: int, name: str) -> None:
        """Name track `tid` (by default track n is "CPU n"); call before its first event."""
        self._cpus.add(tid)
        self.events.append({"ph": "M", "name": "thread_name", "pid": self.pid, "tid": tid, "args": {"name": name}})

    def _track(self, cpu: int) -> None:
        if cpu not in self._cpus:
            self.name_track(cpu, f"CPU {cpu}")

    def _on_cpu(self, ph: str, cpu: int, name: str, t_ns: int, args: dict | None, **extra) -> None:
        self._track(cpu)
        event = {"ph": ph, "name": name, "pid": self.pid, "tid": cpu, "ts": _us(t_ns), **extra}
        if args:
            event["args"] = args
        self.events.append(event)

    def begin(self, cpu: int, name: str, t_ns: int, args: dict | None = None, cat: str | None = None) -> None:
        """A slice `name` (of category `cat`) opens on `cpu` (closed by the matching `end`; slices nest)."""
        if cat is None:
            self._on_cpu("B", cpu, name, t_ns, args)
        else:
            self._on_cpu("B", cpu, name, t_ns, args, cat=cat)

    def complete(self, cpu: int, name: str, t_ns: int, dur_ns: int, args: dict | None = None) -> None:
        """A whole slice of `dur_ns` from t_ns on `cpu` (it must nest with the B/E slices open there)."""
        self._on_cpu("X", cpu, name, t_ns, args, dur=_us(dur_ns))

    def end(self, cpu: int, name: str, t_ns: int) -> None:
        """The innermost open slice on `cpu`, which must be `name`, closes."""
        self._on_cpu("E", cpu, name, t_ns, None)

    def instant(self, cpu: int, name: str, t_ns: int, args: dict | None = None) -> None:
        """A point event on `cpu` (drawn as a thread-scoped tick)."""
        self._on_cpu("i", cpu, name, t_ns, args, s="t")

    def flow(self, src_cpu: int, t_src_ns: int, dst_cpu: int, t_dst_ns: int, name: str) -> None:
        """An arrow from `src_cpu` at t_src to the slice enclosing t_dst on `dst_cpu` (e.g. an IPI)."""
        self._flows += 1
        self._on_cpu("s", src_cpu, name, t_src_ns, None, cat="flow", id=self._flows)
        self._on_cpu("f", dst_cpu, name, t_dst_ns, None, cat="flow", id=self._flows, bp="e")

    def counter(self, name: str, t_ns: int, value: float, key: str = "value") -> None:
        """A sample of the process-wide counter track `name` (e.g. gather memory in bytes); Perfetto shows
        it as the track "`name` `key`"."""
        self.events.append({"ph": "C", "name": name, "pid": self.pid, "ts": _us(t_ns), "args": {key: value}})

    def to_dict(self) -> dict:
        return {"traceEvents": self.events, "displayTimeUnit": "ns"}

    def write(self, path: str | Path) -> None:
        write_traces([self], path)


def write_traces(traces: list[ChromeTrace], path: str | Path) -> None:
    """Write several traces (distinct pids and flow ids) as one JSON file, in the order given."""
    events = [e for t in traces for e in t.events]
    Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}, separators=(",", ":")))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_trace(obj) -> list[str]:
    """Problems in a Chrome trace (the object form or a bare event list): missing fields for the event's
    phase, B/E that do not pair in stack order on their track, a track whose timestamps go back, flow
    starts and finishes that do not pair one to one. An empty list means none were found."""
    events = obj.get("traceEvents") if isinstance(obj, dict) else obj
    if not isinstance(events, list):
        return ["expected a list of events or an object with a 'traceEvents' list"]
    problems: list[str] = []
    stacks: dict[tuple, list[str]] = {}
    last_ts: dict[tuple, float] = {}
    flows: dict[tuple[Any, Any], dict[str, list[float]]] = {}      # (cat, id) -> its starts and finishes
    for k, e in enumerate(events):
        where = f"event {k}"
        if not isinstance(e, dict) or e.get("ph") not in _REQUIRED:
            problems.append(f"{where}: unknown or missing phase {e.get('ph') if isinstance(e, dict) else e!r}")
            continue
        ph = e["ph"]
        missing = [f for f in _REQUIRED[ph] if f not in e]
        if missing:
            problems.append(f"{where} ({ph}): missing {', '.join(missing)}")
            continue
        if ph == "M":
            continue
        if not _is_number(e["ts"]) or e["ts"] < 0:
            problems.append(f"{where} ({ph}): ts must be a non-negative number, got {e['ts']!r}")
            continue
        if ph in "sf":
            flows.setdefault((e.get("cat"), e["id"]), {"s": [], "f": []})[ph].append(e["ts"])
            continue
        track = ("counter", e["pid"], e["name"]) if ph == "C" else ("thread", e["pid"], e["tid"])
        on = "its counter track" if ph == "C" else f"tid {e['tid']}"
        where += f" ({ph} '{e.get('name', '')}' on pid {e['pid']} {on})"
        if e["ts"] < last_ts.get(track, -math.inf):
            problems.append(f"{where}: ts {e['ts']} goes back from {last_ts[track]} on its track")
        last_ts[track] = max(e["ts"], last_ts.get(track, -math.inf))
        if ph == "C" and not (isinstance(e["args"], dict) and e["args"]
                              and all(_is_number(v) for v in e["args"].values())):
            problems.append(f"{where}: counter args must be a non-empty object of numbers")
        elif ph == "X" and not (_is_number(e["dur"]) and e["dur"] >= 0):
            problems.append(f"{where}: dur must be a non-negative number")
        elif ph == "B":
            stacks.setdefault(track, []).append(e["name"])
        elif ph == "E":
            stack = stacks.get(track)
            if not stack:
                problems.append(f"{where}: E with no open B on its track")
                continue
            opened = stack.pop()
            if "name" in e and e["name"] != opened:
                problems.append(f"{where}: E closes '{e['name']}' but the innermost open B is '{opened}'")
    return problems + _left_open(stacks, flows)


def _left_open(stacks: dict[tuple, list[str]], flows: dict[tuple[Any, Any], dict[str, list[float]]]) -> list[str]:
    """validate_trace's problems at the end of the events: B events never closed, flows that do not pair."""
    problems = []
    for (_, pid, tid), stack in stacks.items():
        for name in stack:
            problems.append(f"B '{name}' on pid {pid} tid {tid} is never closed by an E")
    for (cat, fid), ends in flows.items():
        if len(ends["s"]) != 1 or len(ends["f"]) != 1:
            problems.append(f"flow id {fid} (cat {cat}): {len(ends['s'])} start(s) and {len(ends['f'])} "
                            f"finish(es), expected one of each")
        elif ends["f"][0] < ends["s"][0]:
            problems.append(f"flow id {fid} (cat {cat}): finishes at {ends['f'][0]} before it starts at "
                            f"{ends['s'][0]}")
    return problems
