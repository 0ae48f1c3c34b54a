"""mm/vma.c v6.18: munmap's VMA surgery and page-table clearing (moved out of mm/mmap.c in v6.12)."""
from __future__ import annotations

from mmugather.kernel.locking import DowngradeWrite, UpRead
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap import FIRST_USER_ADDRESS

USER_PGTABLES_CEILING = 0


class VmaOps618(KernelPart):
    """Kernel methods of mm/vma.c, Linux v6.18."""

    def do_vmi_align_munmap(self, c, mm, start: int, end: int, unlock: bool):
        """do_vmi_align_munmap() -> vms_gather_munmap_vmas() (split at the edges, detach) and
        vms_complete_munmap_vmas(): downgrade mmap_lock to read when `unlock`, vms_clear_ptes()
        (whose free_pgtables() unlinks the VMAs from the rmap), mmap_read_unlock(). Returns whether mmap_lock was
        released."""
        detached, prev, nxt = self.detach_vmas(mm, start, end)
        if not detached:
            return False
        if unlock:
            yield DowngradeWrite(mm.mmap_sem)                  # mmap_write_downgrade()
        unmap_start = prev.end if prev is not None else FIRST_USER_ADDRESS
        unmap_end = nxt.start if nxt is not None else USER_PGTABLES_CEILING
        yield self.vms_clear_ptes(c, mm, detached, start, end, unmap_start, unmap_end)
        if unlock:
            yield UpRead(mm.mmap_sem)
        return unlock

    def vms_clear_ptes(self, c, mm, vmas: list, start: int, end: int, unmap_start: int, unmap_end: int):
        """vms_clear_ptes(), mm/vma.c v6.18: one gather over unmap_vmas() and free_pgtables() of the
        detached VMAs, between the neighbours; tlb_finish_mmu()."""
        tlb = yield self.tlb_gather_mmu(c, mm, False)
        yield self.unmap_vmas(c, tlb, vmas, start, end, None)
        yield self.free_pgtables(c, tlb, vmas, unmap_start, unmap_end)
        yield self.tlb_finish_mmu(c, tlb, start, end)
