"""Cross-CPU calls and user-mode requests a task yields to the engine (kernel/smp.c, kernel/sched.c)."""
from __future__ import annotations

from mmugather.kernel.locking import Request


class SmpCallFunctionMany(Request):
    """smp_call_function_many()/flush_tlb_others(): IPI every target, run `func(target_cpu)` there with
    interrupts off, and wait until each has acknowledged. `func` returns the handler's cost in ns."""

    __slots__ = ("targets", "func")

    def __init__(self, targets: list[int], func) -> None:
        self.targets = targets
        self.func = func


class Compute(Request):
    """User-mode work of `ns` nanoseconds: preemptible and interruptible at any instant."""

    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns


class Sleep(Request):
    """Sleep (hrtimer_nanosleep or a kernel thread waiting for its next period) for `ns` nanoseconds."""

    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns
