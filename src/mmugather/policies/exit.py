"""kernel/exit.c and kernel/fork.c: a thread leaving its mm, and the last user tearing it down.

Like policies/fork.py it sits above mm/ (mmput() ends in exit_mmap()), with the Kernel it is mixed into."""
from __future__ import annotations

from mmugather.mm.kernel_part import KernelPart


class Exit(KernelPart):
    """Kernel methods of kernel/exit.c (exit_mm) and kernel/fork.c (mmput)."""

    def exit_mm(self, c, task):
        """exit_mm(), kernel/exit.c v2.6.39/v3.0: current->mm = NULL, enter_lazy_tlb(), mmput()."""
        mm = task.mm
        if mm is None:
            return
        task.mm = None
        self.arch.enter_lazy_tlb(c)
        yield self.mmput(c, mm)

    def mmput(self, c, mm):
        """mmput(), kernel/fork.c: drop mm_users; the last one runs exit_mmap()."""
        mm.users -= 1
        if mm.users == 0:
            yield self.exit_mmap(c, mm)
