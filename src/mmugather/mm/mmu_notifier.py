"""mm/mmu_notifier.c: secondary MMUs (KVM, XPMEM, GPU drivers) told about invalidations.

A subscriber may sleep in its callbacks (mmu_notifier_invalidate_range_start() is "blockable" since the
3.0 series made the callers preemptible): in 2.6.39 the callers ran inside the per-CPU gather with
preemption disabled, so a sleeping subscriber is a `sleep-in-atomic` bug there (the reason XPMEM and KVM
wanted the 2011 rework); from 3.0 on it is legal.
"""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP
from mmugather.kernel.smp import Sleep
from mmugather.mm.kernel_part import KernelPart


class SleepingSubscriber:
    """A secondary-MMU user whose invalidate_range_start() sleeps `sleep_ns` (waits for its device or
    for a remote node to drop its mappings), as XPMEM and KVM's may."""

    def __init__(self, name: str, sleep_ns: int) -> None:
        self.name = name
        self.sleep_ns = sleep_ns
        self.invalidations = 0


class MmuNotifier(KernelPart):
    """Kernel methods of mm/mmu_notifier.c (include/linux/mmu_notifier.h)."""

    def mmu_notifier_invalidate_range_start(self, c, mm, start: int, end: int):
        """mmu_notifier_invalidate_range_start(): call every subscriber's invalidate_range_start(),
        which may sleep (might_sleep() first, as __mmu_notifier_invalidate_range_start() does)."""
        for sub in mm.notifiers:
            sub.invalidations += 1
            yield MIGHT_SLEEP
            yield Sleep(sub.sleep_ns)

    def mmu_notifier_invalidate_range_end(self, c, mm, start: int, end: int):
        """mmu_notifier_invalidate_range_end(): the subscribers may map [start, end) again."""
        for _ in mm.notifiers:
            yield self.costs.syscall
