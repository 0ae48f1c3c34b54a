"""struct mm_struct, struct vm_area_struct and struct address_space (include/linux/mm_types.h, fs.h)."""
from __future__ import annotations

from bisect import bisect_right

from mmugather.kernel.locking import Mutex, RwSemaphore, Spinlock
from mmugather.mm.pgtable import DirTable

VM_READ = 0x1
VM_WRITE = 0x2
VM_SHARED = 0x8
VM_GROWSDOWN = 0x100
VM_PFNMAP = 0x400
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_DONTDUMP = 0x04000000
VM_MIXEDMAP = 0x10000000
VM_ACCOUNT = 0x100000

MM_FILEPAGES, MM_ANONPAGES = 0, 1


class AddressSpace:
    """struct address_space of a file: its page cache (index -> pfn), the indices whose folio is dirty
    (PG_dirty, mirrored by the xarray's PAGECACHE_TAG_DIRTY: mm/page_writeback.py), the folios' locks and
    the VMAs mapping it (i_mmap). A device file (`device`) has no page cache: its driver owns a buffer
    (`driver_pfns`, page offset -> pfn) that mmap() maps with remap_pfn_range() (mm/pfnmap.py)."""

    def __init__(self, name: str, device: bool = False) -> None:
        self.name = name
        self.device = device
        self.driver_pfns: dict[int, int] = {}
        self.page_cache: dict[int, int] = {}
        self.pmd_folios: set[int] = set()     # first index of each PMD-sized (2 MiB) folio in the page cache
        self.dirty: set[int] = set()
        self.folio_locks: dict[int, Mutex] = {}                  # PG_locked, made on first use
        self.i_mmap: list[Vma] = []
        self.i_mmap_lock = Spinlock(f"i_mmap_lock:{name}")        # v2.6.39
        self.i_mmap_mutex = Mutex(f"i_mmap_mutex:{name}")         # v3.0 (3d48ae45e72390ddf8cc)
        self.i_mmap_rwsem = RwSemaphore(f"i_mmap_rwsem:{name}")   # v3.19+ (c8c06efa8b55)
        self.truncate_count = 0                                    # v2.6.39 unmap_mapping_range() restarts
        self.unmap_mutex = Mutex(f"unmap_mutex:{name}")            # v2.6.39


    def pmd_folio_of(self, index: int) -> int | None:
        """The first index of the PMD-sized folio holding page `index` (folio_test_pmd_mappable()), or None
        when that page is in a folio of its own."""
        head = index & ~511
        return head if self.pmd_folios and head in self.pmd_folios else None

    def folio_lock_of(self, index: int) -> Mutex:
        """The lock of the page-cache folio at `index` (PG_locked, a sleeping bit lock: a Mutex here)."""
        lock = self.folio_locks.get(index)
        if lock is None:
            lock = self.folio_locks[index] = Mutex(f"folio_lock:{self.name}[{index}]")
        return lock


class Vma:
    """struct vm_area_struct: [start, end) with flags, and the file and page offset when file-backed."""

    __slots__ = ("start", "end", "flags", "file", "pgoff", "name", "mm", "truncate_count")

    def __init__(self, mm, start: int, end: int, flags: int, file: AddressSpace | None = None,
                 pgoff: int = 0, name: str = "") -> None:
        self.mm = mm
        self.start = start
        self.end = end
        self.flags = flags
        self.file = file
        self.pgoff = pgoff
        self.name = name
        self.truncate_count = 0                   # vm_truncate_count (v2.6.39)

    @property
    def anonymous(self) -> bool:
        return self.file is None

    @property
    def pfnmap(self) -> bool:
        return bool(self.flags & (VM_PFNMAP | VM_MIXEDMAP))

    def __repr__(self) -> str:
        return f"Vma({self.start:#x}-{self.end:#x} {self.name or ('anon' if self.file is None else self.file.name)})"


class MmStruct:
    """struct mm_struct: VMAs sorted by address, the page-table root, locks, RSS counters, mm_cpumask."""

    def __init__(self, mm_id: int, pgd_pfn: int) -> None:
        self.id = mm_id
        self.pgd = DirTable(pgd_pfn)
        self.pte_tables: dict[int, object] = {}   # addr >> PMD_SHIFT -> PteTable, mirrors the tree
        # addr >> PMD_SHIFT -> the PMD entry where it maps a 2 MiB folio (pmd_trans_huge(); mm/huge_memory.py):
        # such a PMD is a leaf, held here beside the tree, never also a PTE table in pte_tables
        self.huge_pmds: dict[int, int] = {}
        self.vmas: list[Vma] = []
        self.mmap_sem = RwSemaphore(f"mmap_sem:{mm_id}")
        self.page_table_lock = Spinlock(f"page_table_lock:{mm_id}")
        self.rss = [0, 0]
        self.cpumask: set[int] = set()            # mm_cpumask()
        self.users = 0                            # mm_users: threads using it
        self.nr_ptes = 0
        self.exited = False
        self.tlb_gen = 0                          # mm->context.tlb_gen (x86, v4.14+)
        self.tlb_flush_pending = 0                # mm->tlb_flush_pending (v4.13+)
        self.global_asid = 0                      # mm->context.global_asid (x86 INVLPGB, v6.15+; 0: none)
        self.asid_transition = False              # mm->context.asid_transition (x86 INVLPGB, v6.15+)
        self.notifiers: list = []                 # mm->notifier_subscriptions
        self.zero_ptes = False                    # has it mapped the zero page (the bulk zap declines)?
        # the process's anon_vma root lock, as each version has it (mm/rmap.py)
        self.anon_vma_lock = Spinlock(f"anon_vma->lock:{mm_id}")
        self.anon_vma_mutex = Mutex(f"anon_vma->mutex:{mm_id}")
        self.anon_vma_rwsem = RwSemaphore(f"anon_vma->rwsem:{mm_id}")

    def find_vma(self, addr: int) -> Vma | None:
        """find_vma(): the first VMA with end > addr (it may start above addr)."""
        i = bisect_right([v.end for v in self.vmas], addr)
        return self.vmas[i] if i < len(self.vmas) else None

    def insert_vma(self, vma: Vma) -> None:
        """insert_vm_struct(): link a VMA that overlaps none."""
        i = bisect_right([v.start for v in self.vmas], vma.start)
        if (i > 0 and self.vmas[i - 1].end > vma.start) or (i < len(self.vmas) and self.vmas[i].start < vma.end):
            raise ValueError(f"VMA {vma.start:#x}-{vma.end:#x} overlaps an existing mapping")
        self.vmas.insert(i, vma)
        if vma.file is not None:
            vma.file.i_mmap.append(vma)

    def next_vma(self, vma: Vma) -> Vma | None:
        i = self.vmas.index(vma) + 1
        return self.vmas[i] if i < len(self.vmas) else None

    def prev_vma(self, vma: Vma) -> Vma | None:
        i = self.vmas.index(vma)
        return self.vmas[i - 1] if i > 0 else None
