"""kernel/sched/: what kernel paths say to the scheduler beyond the requests of kernel/locking.py and
kernel/smp.py: the kinds of preemption point a step leaves behind, the lazy-TLB states of a CPU
(arch/x86/include/asm/tlbflush.h cpu_tlbstate.state), and `Elapse`, many steps spent at once.

These live below mm/ and arch/ so that kernel code can yield them without importing the engine
(the engine, machine/engine.py and machine/cpu.py, imports them from here).
"""
from __future__ import annotations

# kinds of preemption point: where the last step left the task (Cpu.point)
P_PLAIN, P_COND_RESCHED, P_MIGHT_SLEEP, P_ENABLE = range(4)

# cpu_tlbstate.state (arch/x86/include/asm/tlbflush.h, before 4.19)
TLBSTATE_OK, TLBSTATE_LAZY = 1, 2
INF = float("inf")


class Elapse:
    """Many steps at once (the fast path, src/mmugather/fastpath/): spend `ns`, then leave the preemption
    point where the last of those steps left it. Only valid for steps nothing else could interleave with."""

    __slots__ = ("ns", "point")

    def __init__(self, ns: int, point: int) -> None:
        self.ns = ns
        self.point = point
