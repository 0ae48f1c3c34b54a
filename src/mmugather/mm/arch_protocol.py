"""What the modelled kernel expects of an architecture, stated on the mm side (as the kernel's
include/asm-generic/tlb.h and include/linux/mm_types.h state what generic mm code uses and each arch's
asm/tlbflush.h, asm/tlb.h and asm/mmu_context.h provides).

`Arch` is the set of hooks mm/, kernel/ and the engine may call: flush_tlb_mm(), flush_tlb_page(),
flush_tlb_range(), tlb_flush() (the gather's flush), switch_mm() and enter_lazy_tlb(), plus the Kconfig
choices the generic code tests (HAVE_RCU_TABLE_FREE, ...); `Arch618` adds the asm-generic/tlb.h knobs of
today's mmu_gather. `Cpu`, `Task`, `Gather` and `Gather618` are what an arch in turn reads of the CPU, the
task and the gather. The arches (arch/, one module each, above mm/) implement these Protocols; arch/base.py
re-exports them, and the typed registry in arch/__init__.py holds each arch to its Protocol under mypy.
"""
from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct

# A kernel path as the engine runs it: yields ints (ns), requests and nested paths; returns nothing here.
KernelPath = Generator[Any, Any, None]


class Task(Protocol):
    """The part of a task an arch reads: current->mm (None for kernel threads and after exit_mm())."""

    @property
    def mm(self) -> MmStruct | None: ...


class Cpu(Protocol):
    """The per-CPU state an arch reads and writes (the engine's Cpu, machine/cpu.py): the running task and
    x86's cpu_tlbstate (loaded_mm, active_mm, is_lazy as `tlbstate`, per-CPU words in `per_cpu`)."""

    id: int
    loaded_mm: MmStruct | None
    active_mm: MmStruct | None
    tlbstate: int
    per_cpu: dict[str, Any]

    @property
    def curr(self) -> Task | None: ...
    @property
    def ptl_held(self) -> int: ...


class Gather(Protocol):
    """The part of struct mmu_gather an arch's tlb_flush() reads in 2.6.39 and 3.0: the mm."""

    @property
    def mm(self) -> MmStruct: ...


class Gather618(Gather, Protocol):
    """The part of struct mmu_gather (include/asm-generic/tlb.h v6.18) an arch's tlb_flush() reads."""

    @property
    def fullmm(self) -> bool: ...
    @property
    def need_flush_all(self) -> bool: ...
    @property
    def freed_tables(self) -> bool: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def page_size(self) -> int:
        """The page size gathered (CONFIG_MMU_GATHER_PAGE_SIZE; 0 before any): powerpc radix reads it."""
        ...

    def get_unmap_shift(self) -> int:
        """tlb_get_unmap_shift(): the stride of the lowest page-table level cleared."""
        ...


G = TypeVar("G", contravariant=True)


class Arch(Protocol[G]):
    """What mm/, kernel/ and the engine may call on an arch, whose tlb_flush() takes a gather of type G.

    Callers: tlb_flush (policies/base.py), flush_tlb_mm (policies/fork.py dup_mmap), flush_tlb_page
    (mm/memory, mm/mremap), flush_tlb_range (mm/mprotect, mm/mremap), switch_mm (the engine's
    context switch, mm/exec.py exec_mmap), enter_lazy_tlb (the engine, policies/exit.py exit_mm),
    have_rcu_table_free (mm/mmu_gather), tlb_entry_live/pwc_entry_live (sim/invariants.py)."""

    @property
    def name(self) -> str:
        """The --arch name."""
        ...

    @property
    def have_rcu_table_free(self) -> bool:
        """CONFIG_HAVE_RCU_TABLE_FREE (v3.0) / MMU_GATHER_RCU_TABLE_FREE (v6.18): page tables are freed
        after a grace period, because some walker (GUP-fast, a software TLB refill) does not wait for IPIs."""
        ...

    def tlb_entry_live(self, x: Cpu) -> bool:
        """Whether CPU x may still use its cached translations (invariant #1 counts only those)."""
        ...

    def pwc_entry_live(self, x: Cpu) -> bool:
        """Whether CPU x may still use its cached page-table walks (paging-structure caches)."""
        ...

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """switch_mm(): CPU c runs next_mm's address space (a task without an mm enters lazy TLB instead)."""
        ...

    def enter_lazy_tlb(self, c: Cpu) -> None:
        """enter_lazy_tlb(): CPU c runs a task without an mm, keeping the one loaded."""
        ...

    def tlb_flush(self, c: Cpu, tlb: G) -> KernelPath:
        """tlb_flush(): invalidate what the gather tlb has unmapped."""
        ...

    def flush_tlb_mm(self, c: Cpu, mm: MmStruct) -> KernelPath:
        """flush_tlb_mm(): invalidate every translation of mm on every CPU."""
        ...

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """flush_tlb_page(): invalidate one page of mm on every CPU."""
        ...

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """flush_tlb_range(): invalidate [start, end) of mm on every CPU."""
        ...


class Arch618(Arch[Gather618], Protocol):
    """An arch for the v6.18 mmu_gather: also the asm-generic/tlb.h knobs it selects."""

    @property
    def mmu_gather_merge_vmas(self) -> bool:
        """MMU_GATHER_MERGE_VMAS: tlb_end_vma() does not flush at VMA boundaries."""
        ...

    @property
    def mmu_gather_page_size(self) -> bool:
        """MMU_GATHER_PAGE_SIZE: the gather flushes when the page size changes."""
        ...

    @property
    def tlb_needs_table_invalidate(self) -> bool:
        """tlb_needs_table_invalidate(): flush before page tables go to RCU."""
        ...

    @property
    def pt_reclaim(self) -> bool:
        """CONFIG_PT_RECLAIM (the arch selects ARCH_SUPPORTS_PT_RECLAIM): MADV_DONTNEED frees PTE tables it
        empties, and a lone table is freed through call_rcu() rather than by IPI + free."""
        ...
