"""PFN maps: a driver's buffer mapped into user space with remap_pfn_range() (mm/memory.c), and the driver
revoking it: unmap_mapping_range() of the device file, then freeing its frames.

remap_pfn_range() (mm/memory.c v6.18: remap_pfn_range_internal() -> remap_pte_range()) marks the VMA
VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP and installs `pte_mkspecial(pfn_pte(pfn, prot))` for every
page: no struct-page reference, no rmap, no RSS counter. vm_normal_page() returns NULL for such a PTE, so
zap_pte_range() only clears it and records the range for the flush: nothing is gathered and nothing is freed
by the unmapping side. The frames stay the driver's, and only the driver frees them. A driver that takes a
buffer away from user space (DRM's drm_vma_node_unmap() / ttm_bo_unmap_virtual(), a revoke ioctl) first
calls unmap_mapping_range() on the device file's mapping, which zaps every VMA still in its i_mmap and
flushes, and then frees or reuses the memory. That ordering is what b67fbebd4cf9 (CVE-2022-39188) was about:
a munmap() that had already unlinked its VMA from i_mmap but not yet flushed left unmap_mapping_range()
nothing to zap, so it returned while TLBs still mapped the frames.

The model's frames are kind DEVICE from the page allocator (the kernel's are often not RAM at all, but GPU
memory the driver hands to someone else): freeing one that a TLB still maps is caught by invariant #1 as any
other use after free. Only the 6.18 zap walk knows special PTEs (`pfn_maps`, mm/memory/v6_18.py).
"""
from __future__ import annotations

from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mm_types import VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_PFNMAP, VM_WRITE
from mmugather.mm.page_alloc import DEVICE
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SIZE, _PAGE_SPECIAL, addr_end, mk_pte, pte_index
from mmugather.mm.protocols import Path


class Pfnmap(KernelPart):
    """remap_pfn_range() and a driver's revoke of its buffer."""

    pfn_maps = False                   # whether this version's zap walk knows special PTEs (Memory618: yes)

    def device_buffer(self, mapping, first: int, n: int) -> list[int]:
        """The driver's frames for page offsets [first, first + n) of its device, allocated the first time
        they are asked for (the buffer a driver allocates at open or ioctl time, before user space maps it)."""
        if not mapping.device:
            raise AssertionError(f"device_buffer: {mapping.name} is not a device file")
        out = []
        for index in range(first, first + n):
            pfn = mapping.driver_pfns.get(index)
            if pfn is None:
                pfn = mapping.driver_pfns[index] = self.alloc.alloc_page(DEVICE)
            out.append(pfn)
        return out

    def remap_pfn_range(self, mm, vma) -> int:
        """remap_pfn_range(vma, vma->vm_start, pfn, size, prot), mm/memory.c v6.18, as a driver's ->mmap()
        calls it for the whole VMA, before mmap_region() links the VMA (so nothing else can reach its page
        tables yet: no lock is modelled): VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP, and a special PTE
        for each page of the device buffer (no reference, no mapcount, no RSS). Returns the PTEs set."""
        if vma.file is None or not vma.file.device:
            raise AssertionError(f"remap_pfn_range: {vma!r} does not map a device file")
        vma.flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        pfns = self.device_buffer(vma.file, vma.pgoff, (vma.end - vma.start) >> PAGE_SHIFT)
        writable = bool(vma.flags & VM_WRITE)
        addr, k = vma.start, 0
        while addr < vma.end:
            nxt = addr_end(addr, vma.end, PMD_SIZE)
            pt = self.install_pte_table(mm, addr)
            while addr < nxt:
                pt.ptes[pte_index(addr)] = mk_pte(pfns[k], writable) | _PAGE_SPECIAL    # pte_mkspecial()
                addr += 1 << PAGE_SHIFT
                k += 1
        return k

    def device_revoke(self, c, task, mapping) -> Path:
        """A driver taking its buffer away from user space (a revoke ioctl; DRM's drm_vma_node_unmap() and
        the buffer's release): unmap_mapping_range(mapping, 0, 0, 1) zaps every VMA still in the device's
        i_mmap (under i_mmap_rwsem, each with a gather of its own that flushes), then the driver frees each
        frame of the buffer (__free_pages())."""
        if not mapping.device:
            raise AssertionError(f"device_revoke: {mapping.name} is not a device file")
        yield self.costs.syscall
        yield self.unmap_mapping_range(c, mapping, 0)
        for index in sorted(mapping.driver_pfns):
            pfn = mapping.driver_pfns.pop(index)
            yield self.costs.page_free
            self.alloc.free_page(c, pfn)
