"""Timelines of a run: `attach_trace(sim)` feeds a ChromeTrace (report/trace.py) from one simulation.

Zero cost when off: the tracer is an observer attached to that simulation's engine (machine/engine.py's
EngineObserver hooks: steps, context switches, preemption and PTE-lock spans, IPIs) and a listener on each
task's stack (machine/cpu.py's FrameStack: pushes and pops). An engine with no observer calls no hook and
keeps plain lists as stacks. Attach before `sim.run()`.

What the trace holds, per run (one pid; thread tracks named by metadata, tids unique in the file):
- "CPU n": the task running on CPU n as a slice named after it (category "task") and, nested in it, a
  slice for every kernel path on its stack, from the engine pushing the generator to its return, named
  after the function (sys_munmap, unmap_vmas, zap_pte_range, tlb_flush_mmu, ...): category "syscall" for
  a kernel entry of the thread's program (a system call, the exit path, gup), "fault" for do_page_fault,
  "kernel" below them. User loads and stores (workloads/program.access) and the syscall wrapper are not
  slices. When a task is switched out its slices close on that track, and open again when it resumes.
  IPI handlers are complete slices on the receiving CPU, each the end of a flow arrow ("IPI") from the
  sender's flush: one arrow per IPI counted in `ipis_sent`. A violation is an instant ("violation: KIND")
  on the track of the CPU whose step detected it, its args naming the CPU at fault and the detail. A
  design's own events (Engine.note: LATR's lazy shootdowns and invalidations, ABIS's avoided IPIs) are
  instants named after the event on the track of the CPU they happen on.
- "CPU n preempt off": spans where preempt_count > 0 (the preempt_off_ns intervals).
- "CPU n PTE lock": spans where CPU n holds a PTE lock (the pte_lock_hold_ns intervals).
- "machine": violations found outside any CPU's step (the leak check after the run).
- counters "CPU n batch fill" (entries in the active batch of the gather of the task on CPU n) and
  "CPU n pending free" (entries in all its batches: pages unhooked and waiting for the flush before they
  are freed), sampled when a kernel function taking the gather (`tlb` argument) is entered or returns.
  An entry is a page (a multi-page folio in a 6.18 batch takes two).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mmugather.errors import InputError
from mmugather.machine.engine import EngineObserver
from mmugather.report.trace import PID, ChromeTrace, write_traces
from mmugather.workloads import program

# tid = pid * TIDS_PER_RUN + track + CPU number: unique across a file of several runs, never a pid
TIDS_PER_RUN = 10_000
CPU_TRACK, PREEMPT_TRACK, PTL_TRACK, MACHINE_TRACK = 0, 1000, 2000, 3000

_SYSCALL = program.syscall.__code__
_ACCESS = program.access.__code__


def attach_trace(sim, *, pid: int = PID, first_flow_id: int = 1) -> ChromeTrace:
    """Trace `sim` (a Simulation that has not run yet) into a new ChromeTrace named after its policy,
    workload and machine, as process `pid` with flow ids from `first_flow_id` (several runs in one file:
    distinct pids, and the previous trace's `next_flow_id`). The trace is complete once `sim.run()`
    returns or raises."""
    engine = sim.engine
    if any(isinstance(o, Tracer) for o in engine.observers):
        raise ValueError("attach_trace: this simulation is traced already")
    trace = ChromeTrace(f"{sim.kernel.name}: {sim.scenario.name} ({sim.ncpus} CPUs, {sim.arch_name}, "
                        f"preempt {sim.preempt}, seed {sim.seed})", pid=pid, first_flow_id=first_flow_id)
    tracer = Tracer(trace, engine.cpus)
    engine.attach(tracer)
    _hook_violations(tracer, sim.invariants)
    return trace


class Tracer(EngineObserver):
    """An engine observer and stack listener writing one run's trace: the slices open on each CPU track,
    the last counter values."""

    def __init__(self, trace: ChromeTrace, cpus: list) -> None:
        self.trace = trace
        self.cpus = cpus
        self.costs: Any = None             # the engine's Costs, from attached()
        self.saved_active: list = []       # the active CPU around each schedule()
        base = trace.pid * TIDS_PER_RUN
        self.tid = [base + CPU_TRACK + c.id for c in cpus]
        self.preempt_tid = [base + PREEMPT_TRACK + c.id for c in cpus]
        self.ptl_tid = [base + PTL_TRACK + c.id for c in cpus]
        self.machine_tid = base + MACHINE_TRACK
        self.open: list[list[str]] = [[] for _ in cpus]   # names of the slices open on each CPU track
        self.gather_of: dict = {}          # generator -> the gather it was called with
        self.takes_gather: dict = {}       # code object -> has a `tlb` argument
        self.before_active: dict = {}      # gather -> (its active batch, entries before it): _gather_fill
        self.last: dict[str, int] = {}     # counter name -> last value written
        self.counters = [(f"CPU {c.id} batch fill", f"CPU {c.id} pending free") for c in cpus]
        self.active = None                 # the CPU whose step runs now (violations go on its track)
        for c in cpus:
            trace.name_track(self.tid[c.id], f"CPU {c.id}")
            trace.name_track(self.preempt_tid[c.id], f"CPU {c.id} preempt off")
            trace.name_track(self.ptl_tid[c.id], f"CPU {c.id} PTE lock")
        trace.name_track(self.machine_tid, "machine")

    # ------------------------------------------------------------------ engine hooks
    def attached(self, engine) -> None:
        """Listen to the stacks of the tasks there are, and open the slices of those running now."""
        self.costs = engine.costs
        for task in engine.tasks.values():
            self.spawned(task)
        for c in self.cpus:
            if c.curr is not None:
                self.open_task(c, c.curr)

    def spawned(self, task) -> None:
        stack = task.watch()
        if self not in stack.listeners:
            stack.listeners.append(self)

    def step(self, c) -> None:
        self.active = c

    def switching(self, c) -> None:
        """The outgoing task's slices close at the switch, the incoming task's open after its cost."""
        self.saved_active.append(self.active)
        self.close_all(c)
        self.active = c

    def switched(self, c) -> None:
        self.active = self.saved_active.pop()
        if c.curr is not None:
            self.open_task(c, c.curr)

    def preempt_off(self, c) -> None:
        self.trace.begin(self.preempt_tid[c.id], "preempt off", c.clock)

    def preempt_on(self, c) -> None:
        self.trace.end(self.preempt_tid[c.id], "preempt off", c.clock)

    def ptl_taken(self, c, lock) -> None:
        self.trace.begin(self.ptl_tid[c.id], "PTE lock", c.clock, {"lock": lock.name})

    def ptl_dropped(self, c, t: int) -> None:
        self.trace.end(self.ptl_tid[c.id], "PTE lock", t)

    def ipi(self, c, v):
        """Each target's handler becomes a slice on that CPU, with a flow arrow from here and now."""
        func = v.func
        name = getattr(func, "__name__", "ipi")
        src, sent = self.tid[c.id], c.clock
        handler_cost = self.costs.ipi_handler

        def traced(t) -> int:
            start, active = t.clock, self.active
            self.active = t
            cost = func(t)
            self.active = active
            dur = handler_cost + cost
            dst = self.tid[t.id]
            self.trace.complete(dst, name, start, dur)
            self.trace.flow(src, sent, dst, start + dur // 2, "IPI")
            return cost
        v = copy.copy(v)
        v.func = traced
        return v

    def event(self, c, name: str, args: dict) -> None:
        """A design's event (Engine.note): an instant on c's track."""
        self.trace.instant(self.tid[c.id], name, c.clock, args)

    def run_ended(self) -> None:
        self.end_run()

    # ------------------------------------------------------------------ stack listener

    @staticmethod
    def slice_of(task, code, parent, depth: int) -> tuple[str, str] | None:
        """(name, category) of the slice of a generator at `depth` on task's stack (parent: the code of
        the one below it), or None if it gets none."""
        if depth == 0:
            return task.name, "task"
        if code is _ACCESS or code is _SYSCALL:
            return None
        if depth == 1 or parent is _SYSCALL:
            return code.co_name, "syscall"
        return code.co_name, "fault" if parent is _ACCESS else "kernel"

    def pushed(self, stack, gen) -> None:
        depth = len(stack) - 1
        code = gen.gi_code
        s = self.slice_of(stack.task, code, stack[depth - 1].gi_code if depth else None, depth)
        if s is None:
            return
        c = self.cpus[stack.task.cpu]
        self.open[c.id].append(s[0])
        self.trace.begin(self.tid[c.id], s[0], c.clock, cat=s[1])
        takes = self.takes_gather.get(code)
        if takes is None:
            takes = self.takes_gather[code] = "tlb" in code.co_varnames[:code.co_argcount]
        if takes:
            tlb = self.gather_of[gen] = gen.gi_frame.f_locals["tlb"]
            self.sample(c, tlb)

    def popped(self, stack, gen) -> None:
        depth = len(stack)
        s = self.slice_of(stack.task, gen.gi_code, stack[depth - 1].gi_code if depth else None, depth)
        if s is None:
            return
        c = self.cpus[stack.task.cpu]
        self.open[c.id].pop()
        self.trace.end(self.tid[c.id], s[0], c.clock)
        tlb = self.gather_of.pop(gen, None)
        if tlb is not None:
            self.sample(c, tlb)

    def open_task(self, c, task) -> None:
        """Open the slices of every frame on task's stack (it starts or resumes on c)."""
        stack = task.stack
        opened = self.open[c.id]
        for depth, gen in enumerate(stack):
            s = self.slice_of(task, gen.gi_code, stack[depth - 1].gi_code if depth else None, depth)
            if s is not None:
                opened.append(s[0])
                self.trace.begin(self.tid[c.id], s[0], c.clock, cat=s[1])

    def close_all(self, c) -> None:
        """Close every slice open on c's track (its task is switched out)."""
        for name in reversed(self.open[c.id]):
            self.trace.end(self.tid[c.id], name, c.clock)
        self.open[c.id] = []

    def sample(self, c, tlb) -> None:
        fill = _gather_fill(tlb, self.before_active)
        if fill is None:
            return
        for name, value in zip(self.counters[c.id], fill):
            if self.last.get(name) != value:
                self.last[name] = value
                self.trace.counter(name, c.clock, value, key="pages")

    def violation(self, kind: str, cpu: int, detail: str) -> None:
        args = {"cpu": cpu, "detail": detail}
        c = self.active
        if c is None:
            self.trace.instant(self.machine_tid, f"violation: {kind}", max(x.clock for x in self.cpus), args)
        else:
            self.trace.instant(self.tid[c.id], f"violation: {kind}", c.clock, args)

    def end_run(self) -> None:
        """The run is over: close what is still open on every track."""
        self.active = None
        for c in self.cpus:
            self.close_all(c)
            if c.preempt_count:
                self.trace.end(self.preempt_tid[c.id], "preempt off", c.clock)
            if c.ptl_held:
                self.trace.end(self.ptl_tid[c.id], "PTE lock", c.clock)


def _gather_fill(tlb, before: dict) -> tuple[int, int] | None:
    """(entries in the active batch, entries in all batches) of a gather: 2.6.39's `pages` array, or the
    3.0/6.18 chain of batches from `local` (filled up to `active`, empty after it); None for a gather of
    another shape. `before` caches, per gather, (active batch, entries before it) from the last call:
    the walk goes on from there, and starts again at `local` when a flush has rewound the chain."""
    pages = getattr(tlb, "pages", None)
    if pages is not None:
        return len(pages), len(pages)
    local = getattr(tlb, "local", None)
    if local is None:
        return None
    active = tlb.active
    batch, count = before.get(tlb, (local, 0))
    while batch is not active:
        if batch is None:                   # rewound since the last call
            batch, count = local, 0
            continue
        count += len(batch.pages)
        batch = batch.next
    before[tlb] = (active, count)
    return len(active.pages), count + len(active.pages)


def _hook_violations(tracer: Tracer, invariants) -> None:
    report = invariants.report

    def traced_report(kind: str, cpu: int, detail: str, key=None) -> None:
        before = invariants.total
        report(kind, cpu, detail, key)
        if invariants.total != before:
            tracer.violation(kind, cpu, detail)
    invariants.report = traced_report


def one_file(traces: list[ChromeTrace]) -> list[ChromeTrace]:
    """Traces of runs made alone (attach_trace's default pid and flow ids), renumbered in place as the
    processes 1, 2, ... of one file with flow ids unique across it."""
    for k, trace in enumerate(traces):
        pid = k + 1
        trace.rebase(pid, traces[k - 1].next_flow_id if k else 1, (pid - trace.pid) * TIDS_PER_RUN)
    return traces


def check_trace_path(path: str) -> None:
    """`--trace FILE`: a one-line error before any run if FILE cannot be written there."""
    p = Path(path)
    if p.is_dir() or not p.parent.is_dir():
        raise InputError(f"--trace: cannot write {path}: "
                         f"{'it is a directory' if p.is_dir() else 'no such directory'}")


def save_traces(traces: list[ChromeTrace], path: str) -> None:
    """Write the traces of several runs (one process each) to one file; OS errors are one-line errors."""
    try:
        write_traces(traces, path)
    except OSError as e:
        raise InputError(f"--trace: cannot write {path}: {e.strerror}") from None
