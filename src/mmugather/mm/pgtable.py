"""x86-64 four-level page tables (arch/x86/include/asm/pgtable_64_types.h, pgtable_types.h).

PGD -> PUD -> PMD -> PTE, 512 entries each. Upper levels are stored sparsely (a dict of present entries);
a PTE table is an `array('q')` of 512 raw PTEs, so a later fast path can view it with numpy. Every table
is backed by a real frame from the allocator (kind PGTABLE), so freeing one is observable.
"""
from __future__ import annotations

from array import array
from typing import Any

from mmugather.kernel.locking import Spinlock

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTRS_PER_TABLE = 512
PMD_SHIFT = 21
PUD_SHIFT = 30
PGDIR_SHIFT = 39
PMD_SIZE = 1 << PMD_SHIFT
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SIZE = 1 << PGDIR_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PUD_MASK = ~(PUD_SIZE - 1)
PGDIR_MASK = ~(PGDIR_SIZE - 1)
TASK_SIZE = (1 << 47) - PAGE_SIZE
ULONG_MASK = (1 << 64) - 1

# PTE bits (arch/x86/include/asm/pgtable_types.h)
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080         # a PMD entry that maps a 2 MiB page (pmd_trans_huge()), not a PTE table
_PAGE_SPECIAL = 0x200     # _PAGE_BIT_SPECIAL = _PAGE_BIT_SOFTW1: pte_mkspecial(), no struct page behind it
PTE_PFN_SHIFT = 12

_EMPTY_TABLE = array("q", bytes(8 * PTRS_PER_TABLE))


def mk_pte(pfn: int, writable: bool) -> int:
    """mk_pte(): a present user PTE for pfn."""
    return (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | (
        (_PAGE_RW | _PAGE_DIRTY) if writable else 0)


HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER


def mk_pmd(pfn: int, writable: bool) -> int:
    """folio_mk_pmd() (+ pmd_mkdirty()/maybe_pmd_mkwrite() when writable): a present huge PMD entry mapping
    the PMD-sized folio whose first frame is pfn."""
    return mk_pte(pfn, writable) | _PAGE_PSE


def pte_special(pte: int) -> bool:
    """pte_special() (CONFIG_ARCH_HAS_PTE_SPECIAL: x86, arm64): a PFN-map PTE vm_normal_page() skips."""
    return bool(pte & _PAGE_SPECIAL)


def addr_end(addr: int, end: int, size: int) -> int:
    """pgd_addr_end()/pud_addr_end()/pmd_addr_end(): the next boundary of `size`, capped at end."""
    boundary = (addr + size) & ~(size - 1)
    return boundary if (boundary - 1) & ULONG_MASK < (end - 1) & ULONG_MASK else end


class PteTable:
    """A PTE page: 512 raw PTEs, the frame backing it, and its split PTE lock (USE_SPLIT_PTLOCKS)."""

    __slots__ = ("pfn", "ptes", "ptl", "base")

    def __init__(self, pfn: int, base: int) -> None:
        self.pfn = pfn
        self.base = base                      # virtual address mapped by entry 0
        self.ptes = _EMPTY_TABLE[:]           # a copy of exactly 512 entries (no spare capacity)
        self.ptl = Spinlock(f"ptl@{base:#x}", stat="pte")


class DirTable:
    """A PGD, PUD or PMD page: its present entries by index, and the frame backing it."""

    __slots__ = ("pfn", "entries")

    def __init__(self, pfn: int) -> None:
        self.pfn = pfn
        self.entries: dict[int, Any] = {}      # DirTable below a PGD or PUD, PteTable below a PMD


def pgd_index(addr: int) -> int:
    return (addr >> PGDIR_SHIFT) & 511


def pud_index(addr: int) -> int:
    return (addr >> PUD_SHIFT) & 511


def pmd_index(addr: int) -> int:
    return (addr >> PMD_SHIFT) & 511


def pte_index(addr: int) -> int:
    return (addr >> PAGE_SHIFT) & 511
