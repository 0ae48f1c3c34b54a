"""Generic MMU-gather implementation (include/asm-generic/tlb.h, mm/mmu_gather.c), one module per version.

The mmu_gather data structure is used by the mm code to implement the correct and efficient ordering of
freeing pages and TLB invalidations. This correct ordering is:

  1) unhook page
  2) TLB invalidate page
  3) free page

That is, we must never free a page before we have ensured there are no live translations left to it.
(sim/invariants.py checks exactly that, at every step.)

The API, by lifecycle:
- gather:  `tlb_gather_mmu(c, mm, fullmm)`: set up a gather for tearing down (part of) mm; `fullmm` when
  the mm has no users left and the whole address space goes (exit, execve).
- remove:  `_tlb_remove_page(c, tlb, pfn)` (the kernel's __tlb_remove_page) only batches the page and
  reports the free slots left, 0 meaning "you must flush"; `tlb_remove_page` flushes itself when needed.
  `pte_free_tlb` hands a page-table page to the gather (x86 ___pte_free_tlb batches it like any page).
- flush:   `tlb_flush_mmu(c, tlb)`: invalidate the TLBs (`arch.tlb_flush`), then free the batched pages.
- finish:  `tlb_finish_mmu(c, tlb, start, end)`: final flush, give back the gather's own memory.

Three versions are modelled, one module each, each a mixin of kernel methods over its own gather
structure (mm/protocols.py `MmuGather` lists what every one provides):
- `Gather2639` (Linux 2.6.39): one gather per CPU (`DEFINE_PER_CPU(struct mmu_gather, mmu_gathers)`),
  taken with get_cpu_var() so preemption stays off from gather to finish; FREE_PTE_NR = 506 slots; the
  flush happens from inside tlb_remove_page, i.e. under the PTE lock; fast mode when one CPU is online.
- `Gather30` (Linux 3.0, d16dfc550f53 + e303297e6c3a): an on-stack gather with MMU_GATHER_BUNDLE = 8
  slots, extended by a chain of page-sized batches (MAX_GATHER_BATCH = 510 slots each) allocated with
  GFP_NOWAIT and, in 3.0, without any limit on their number (MAX_GATHER_BATCH_COUNT came in v3.8 with
  53a59fc67f97); fast mode when num_possible_cpus() == 1. `RcuTableFree30` (rcu_table_v3_0.py) adds
  HAVE_RCU_TABLE_FREE for the arches that select it.
- `Gather618` (Linux 6.18): the range-tracking gather of mm/mmu_gather.c: an on-stack gather whose batches
  are capped at MAX_GATHER_BATCH_COUNT, a forced flush under the PTE lock when it fills, delayed rmaps of
  dirty shared file pages, page tables freed through an RCU table batch (MMU_GATHER_RCU_TABLE_FREE).

The loops that free what a gather batched ask the kernel's release backend (mm/protocols.py) for runs
to take at once; nothing here knows how fast it runs.
"""
PAGE_SIZE = 4096
