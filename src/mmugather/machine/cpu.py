"""A simulated CPU and the task it runs: the state the engine (machine/engine.py) steps.

A task is a generator on a call stack (`Task.stack`): the engine resumes the top frame, pushes a generator
the frame yields (a call) and pops a frame that returns. A task can count how often each frame on its
stack has been resumed (`Task.count_resumptions()`, `Task.steps()`: explicit program state for the
explorer's fingerprints); `FrameStack` is its stack when someone watches it: it tells listeners (the
tracer) of each push and pop. Other runs keep a plain list and count nothing.
"""
from __future__ import annotations

from collections import deque
from types import GeneratorType
from typing import Any, Protocol

from mmugather.kernel.sched import P_PLAIN, TLBSTATE_OK

# CPU states
RUNNING, SPINNING, IPI_WAIT, COMPUTE, IDLE = range(5)


class TaskContractError(TypeError):
    """A task broke the engine's contract: its body is not a generator, or it yielded something that is
    neither an int (nanoseconds, >= 0), a generator (a call) nor a request (kernel/locking.py,
    kernel/smp.py). The message names the task and what it yielded."""


class StackListener(Protocol):
    """Told of each frame pushed on or popped off a watched task's stack (the engine's clock is the CPU's)."""

    def pushed(self, stack: FrameStack, gen: GeneratorType) -> None: ...

    def popped(self, stack: FrameStack, gen: GeneratorType) -> None: ...


_list_append, _list_pop = list.append, list.pop     # (FrameStack's own, looked up once)


class FrameStack(list):
    """A watched task's call stack: tells `listeners` of every push and pop (the task counts its frames'
    resumptions meanwhile, see Task.count_resumptions(): `steps`)."""

    __slots__ = ("task", "listeners")

    def __init__(self, frames, task: Task) -> None:
        super().__init__(frames)
        self.task = task
        self.listeners: list[StackListener] = []

    def append(self, gen) -> None:
        _list_append(self, gen)
        if self.listeners:
            for listener in self.listeners:
                listener.pushed(self, gen)

    def pop(self):  # type: ignore[override]
        gen = _list_pop(self)
        counts = self.task.counts
        if counts is not None:
            counts.pop(gen, None)               # (a long watched run keeps no count of frames gone)
        if self.listeners:
            for listener in self.listeners:
                listener.popped(self, gen)
        return gen

    @property
    def steps(self) -> list[int]:
        """Each frame's resumptions, bottom first (Task.steps())."""
        return self.task.steps()


class Task:
    """struct task_struct, as much as the engine needs: a generator pinned to one CPU."""

    __slots__ = ("tid", "name", "cpu", "stack", "send", "mm", "process", "in_kernel", "kind", "alive",
                 "compute_left", "woken_at", "blocked_on", "sleep_token", "retval", "counts")

    def __init__(self, tid: int, name: str, cpu: int, kind: str, mm=None, process=None) -> None:
        self.tid = tid
        self.name = name
        self.cpu = cpu
        self.kind = kind          # "user" or "latency" (a kernel thread: no mm of its own)
        self.mm = mm              # current->mm: None for kernel threads and after exit_mm()
        self.process = process
        self.in_kernel = False
        self.alive = True
        self.compute_left = 0
        self.woken_at = -1
        self.blocked_on: Any = None
        self.sleep_token = 0
        self.stack: list = []
        self.send: Any = None     # the running frame's generator.send, from start() on
        self.retval = None
        self.counts: dict | None = None   # count_resumptions(): frame -> its resumptions, where not 1

    def start(self, gen) -> None:
        """Give the task its body; a body that is not a generator breaks the engine's contract."""
        if gen.__class__ is not GeneratorType:
            raise TaskContractError(f"task {self}: its body must be a generator, got {type(gen).__name__} "
                                    f"{gen!r:.80}")
        self.stack = [gen]
        self.send = gen.send

    def watch(self) -> FrameStack:
        """The task's stack as a FrameStack (made one on first use, counting resumptions); returns it."""
        self.count_resumptions()
        if not isinstance(self.stack, FrameStack):
            self.stack = FrameStack(self.stack, self)
        return self.stack

    def count_resumptions(self) -> None:
        """From now on count, per frame on the stack, the times it is resumed (`steps()`): the frames there
        now count 0; a pushed frame counts 1 (the engine resumes it at once), a return one more for the
        caller (resumed with the return value: the engine's step loop counts it), and the controlled
        scheduler counts the resumption of the top frame at the start of each step. `counts` holds the
        frames whose count is not 1, and those that returned since (read only through the stack; a
        FrameStack drops them, the explorer's machines last one execution)."""
        if self.counts is None:
            self.counts = dict.fromkeys(self.stack, 0)

    def steps(self) -> list[int]:
        """Each frame's resumptions, bottom first (none counted: [])."""
        counts = self.counts
        if counts is None:
            return []
        get = counts.get
        return [get(g, 1) for g in self.stack]

    def __repr__(self) -> str:
        return f"{self.name}[{self.tid}]"


class Cpu:
    """One simulated CPU: its clock, current task, preempt_count, pending IPIs and TLB.

    The TLB holds translations of `loaded_mm` only (x86 without PCID: loading CR3 flushes it):
    `tlb` maps a virtual page number to pfn*2 + writable, `pwc` (the paging-structure cache) maps
    addr >> PMD_SHIFT to the PTE table a walk last went through.
    """

    __slots__ = ("id", "clock", "curr", "runqueue", "latency_task", "state", "token", "preempt_count",
                 "irqs_off", "_need_resched", "resched_reads", "pending", "attention", "point", "tlb", "pwc",
                 "loaded_mm", "active_mm", "tlbstate", "dangling", "preempt_off_since", "ptl_held", "compute_end",
                 "ipi_wait_until", "ipi_acks_left", "per_cpu", "slice_armed", "tick_armed", "horizon")

    def __init__(self, cpu_id: int) -> None:
        self.id = cpu_id
        self.clock = 0
        self.curr: Task | None = None     # None: the idle task runs (state IDLE)
        self.runqueue: deque[Task] = deque()
        self.latency_task: Task | None = None
        self.state = IDLE
        self.token = 0
        self.preempt_count = 0
        self.irqs_off = 0
        self._need_resched = False
        self.resched_reads = 0            # how often need_resched was read (the explorer's ticks go before reads)
        self.pending: list = []           # heap of (arrival, seq, func, sender) IPIs
        self.attention = False
        self.point = P_PLAIN
        self.tlb: dict[int, int] = {}
        self.pwc: dict[int, Any] = {}
        self.loaded_mm: Any = None        # the mm CR3 points to; None is init_mm (swapper_pg_dir)
        self.active_mm: Any = None        # cpu_tlbstate.active_mm
        self.tlbstate = TLBSTATE_OK
        self.dangling: set[int] = set()   # pfns freed while this CPU's TLB or PWC still maps them
        self.preempt_off_since = 0
        self.ptl_held = 0
        self.compute_end = 0
        self.ipi_wait_until = 0
        self.ipi_acks_left = 0
        self.per_cpu: dict = {}           # DEFINE_PER_CPU storage used by the modelled kernel
        self.slice_armed = False
        self.tick_armed = False           # a scheduler_tick() is queued for this CPU (Engine.on_tick)
        self.horizon: float = -1          # set by Engine._run_cpu: the time of the next event on the queue

    @property
    def need_resched(self) -> bool:
        """TIF_NEED_RESCHED (need_resched()); every read is counted in `resched_reads`, so that the explorer
        can place its scheduler tick right before a step that reads the flag."""
        self.resched_reads += 1
        return self._need_resched

    @need_resched.setter
    def need_resched(self, value: bool) -> None:
        self._need_resched = value
