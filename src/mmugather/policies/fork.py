"""kernel/fork.c: fork()'s copy of the address space, which write-protects the parent's private pages and
must flush the parent's TLB entries that still allow writes (copy-on-write).

It lives with the Kernel it is mixed into (policies/base.py), not in kernel/: it is built on mm/ (VMAs,
page tables, the allocator), and kernel/ is the layer below mm/ (locks, IPIs, RCU)."""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP, DownWrite, SpinLock, SpinUnlock, UpWrite
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mm_types import MM_ANONPAGES, MM_FILEPAGES, VM_SHARED, VM_WRITE, Vma
from mmugather.mm.page_alloc import ANON
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SHIFT, PMD_SIZE, _PAGE_RW, pte_index


class Fork(KernelPart):
    """Kernel methods of kernel/fork.c (dup_mm, dup_mmap) and copy_page_range() of mm/memory.c."""

    def sys_fork(self, c, task):
        """do_fork() -> copy_mm() -> dup_mm(): a new mm with a copy of every VMA; returns it."""
        yield self.costs.syscall
        yield MIGHT_SLEEP
        new = self.machine.new_mm()
        yield self.dup_mmap(c, new, task.mm)
        return new

    def dup_mmap(self, c, mm, oldmm):
        """dup_mmap(), kernel/fork.c (v2.6.39, v3.0; mm/mmap.c in v6.18): under oldmm's mmap_sem for
        writing, copy each VMA and copy_page_range() it; then flush_tlb_mm(oldmm), because the parent's
        private writable PTEs were write-protected."""
        yield DownWrite(oldmm.mmap_sem)
        for vma in oldmm.vmas:
            new = Vma(mm, vma.start, vma.end, vma.flags, vma.file, vma.pgoff, vma.name)
            mm.insert_vma(new)
            yield self.copy_page_range(c, mm, oldmm, new, vma)
        yield self.arch.flush_tlb_mm(c, oldmm)
        yield UpWrite(oldmm.mmap_sem)

    def copy_page_range(self, c, dst_mm, src_mm, dst_vma, vma):
        """copy_page_range() -> copy_pte_range() -> copy_one_pte(), mm/memory.c: VMAs without anonymous
        pages (file mappings) are left to fault in the child; otherwise every present PTE is copied under
        both PTE locks, and for a copy-on-write mapping (private, writable) write-protected in both."""
        if vma.file is not None:
            return
        cow = not vma.flags & VM_SHARED and vma.flags & VM_WRITE
        alloc = self.alloc
        addr = vma.start
        while addr < vma.end:
            nxt = min((addr & ~(PMD_SIZE - 1)) + PMD_SIZE, vma.end)
            src = src_mm.pte_tables.get(addr >> PMD_SHIFT)
            if src is None:
                yield self.costs.pmd_none
                addr = nxt
                continue
            dst = yield self.pte_alloc(c, dst_mm, addr)
            yield SpinLock(dst.ptl)
            yield SpinLock(src.ptl)
            while addr < nxt:
                i = pte_index(addr)
                pte = src.ptes[i]
                if pte:
                    if cow and pte & _PAGE_RW:
                        pte &= ~_PAGE_RW                       # ptep_set_wrprotect() + pte_wrprotect()
                        src.ptes[i] = pte
                    dst.ptes[i] = pte
                    pfn = pte >> PAGE_SHIFT
                    if pfn == alloc.zero_pfn:                  # vm_normal_page() NULL: the PTE alone
                        dst_mm.zero_ptes = True
                    else:
                        alloc.refcount[pfn] += 1               # get_page()
                        alloc.mapcount[pfn] += 1               # page_dup_rmap()
                        dst_mm.rss[MM_ANONPAGES if alloc.kind[pfn] == ANON else MM_FILEPAGES] += 1
                    yield self.costs.pte_set
                addr += 1 << PAGE_SHIFT
            yield SpinUnlock(src.ptl)
            yield SpinUnlock(dst.ptl)
