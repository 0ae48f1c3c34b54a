"""RCU as the page-table freeing code relies on it (kernel/rcu/tree.c, the "sched" guarantee).

A grace period that starts when call_rcu() is called ends once every CPU that was not idle then has passed
through a quiescent state: a context switch, running user code, or going idle. A CPU with preemption or
interrupts disabled (a gup_fast walk, a spinlock) reports none, so it holds the grace period off, which is
what makes RCU-freed page tables safe from lockless walkers (mm/mmu_gather.c, "Semi RCU freeing of the
page directories").

A CPU is idle when it has no current task (`Cpu.curr is None`: the idle loop, an extended quiescent state).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Rcu:
    """Per-CPU quiescent-state counters and the callbacks waiting for their grace period to end."""

    def __init__(self, cpus, metrics) -> None:
        self.cpus = cpus
        self.metrics = metrics
        self.qs = [0] * len(cpus)
        # (the busy CPUs' counters to pass, the callback, the CPU that queued it)
        self.pending: list[tuple[dict[int, int], Callable[[Any], object], Any]] = []

    def call_rcu(self, c: Any, func: Callable[[Any], object]) -> None:
        """call_rcu(): run func(cpu) once every CPU busy now has passed a quiescent state."""
        need = {x.id: self.qs[x.id] for x in self.cpus if x.curr is not None}
        self.pending.append((need, func, c))
        self.metrics.rcu_callbacks += 1
        if not need:
            self._advance(c)

    def note_qs(self, c) -> None:
        """rcu_note_context_switch() / rcu_user_enter() / rcu_idle_enter(): CPU c is quiescent now."""
        if c.preempt_count or c.irqs_off:
            return
        self.qs[c.id] += 1
        if self.pending:
            self._advance(c)

    def rcu_barrier(self) -> None:
        """rcu_barrier(): at the end of a run every CPU goes idle, so every grace period ends; invoke the
        callbacks still waiting, in the order queued, on the CPU that queued each."""
        pending, self.pending = self.pending, []
        for _, func, owner in pending:
            func(owner)

    def _advance(self, c) -> None:
        """rcu_core(): invoke every callback whose grace period has ended, in the order queued. They run
        on CPU c, whose quiescent state ended the grace period, at its clock: the kernel runs them in the
        queuing CPU's softirq shortly after; the model keeps the time exact rather than the CPU."""
        done = []
        for entry in self.pending:
            need = entry[0]
            if all(self.qs[i] > snap or self.cpus[i].curr is None for i, snap in need.items()):
                done.append(entry)
        if not done:
            return
        self.pending = [e for e in self.pending if e not in done]
        for _, func, _owner in done:
            func(c)
