"""The cost model: what each simulated hardware or kernel action costs, in simulated nanoseconds.

Costs are data. The defaults describe a bare-metal x86-64 server of the Haswell/Skylake era at about
2.6 GHz; `load_costs` overrides any of them from a TOML or JSON file (`--costs FILE`).

Anchors (see ../shared/KERNEL-MAP.md):
- INVLPG ~260 cycles, CR3 reload ~96 cycles, `__flush_tlb_range` ~404 cycles: Ingo Molnar in the linux-mm
  thread on a5102476a24b "x86/mm: Set TLB flush tunable to sane value (33)"; the kernel comment in
  arch/x86/mm/tlb.c says "about 100 ns per single flush".
- flush_tlb_mm_range of one page ~1,276 cycles, full ~2,283 cycles (Dave Hansen, 2014, kernel build).
- MADV_DONTNEED of one page on Haswell: 661 ns with no remote CPU, 1,436 ns with one (Nadav Amit, 2019,
  "Flush remote and local TLBs concurrently"): a one-target shootdown round trip of ~775 ns on top of the
  local work, split here into send, delivery, handler entry and acknowledgement.
- INVLPGB and TLBSYNC: estimates, see the fields.
- Zapping and freeing one touched page: ~270-300 ns, measured on this project's reference machine
  (Linux 6.18, KVM guest); split here into the zap (PTE clear, rmap, batching) and the free.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from mmugather.errors import InputError, read_text_input


@dataclass(frozen=True, slots=True)
class Costs:
    """Simulated nanoseconds per action. Every field is overridable from a cost file."""

    # mm/memory.c work per page table entry
    pte_zap: int = 120          # ptep_get_and_clear_full + page_remove_rmap + rss + batch slot
    pte_set: int = 50           # set_pte_at + page_add_new_anon_rmap + rss in a fault
    pte_none: int = 1           # skipping an empty PTE in the zap loop
    pmd_none: int = 2           # skipping an empty PMD/PUD entry
    page_free: int = 150        # put_page -> free_hot_cold_page, per page (release_pages)
    page_alloc: int = 200       # __alloc_pages fast path (GFP_NOWAIT or GFP_KERNEL)
    page_zero: int = 400        # clear_page of a freshly faulted 4 KiB page
    pgtable_free: int = 150     # freeing one page-table page
    # x86 TLB
    flush_one: int = 100        # INVLPG: ~260 cycles
    flush_full: int = 40        # CR3 reload: ~96 cycles (the refill cost lands on later misses)
    flush_call: int = 300       # flush_tlb_mm/flush_tlb_mm_range bookkeeping around the flush itself
    # arm64 broadcast invalidation (no IPIs): one TLBI ...IS instruction issued, and the DSB ISH that
    # waits until every CPU has applied it (order of magnitude; calibrate per platform)
    tlbi: int = 20
    dsb_ish: int = 500
    # AMD broadcast invalidation (arch/x86_invlpgb.py): ESTIMATES, no published latency was found (the AMD APM
    # vol. 3 gives none; the series reports throughput and CPU-time shares, not per-instruction costs).
    # INVLPGB is weakly ordered and returns once issued (~INVLPG's 260 cycles, rounded); TLBSYNC waits
    # until every CPU has applied the issuer's INVLPGBs, a fabric round trip like an IPI's send + delivery +
    # ack here (650 ns), minus interrupt entry on the targets: 600 ns. Calibrate per platform.
    invlpgb: int = 100
    tlbsync: int = 600
    tlb_miss_walk: int = 30     # hardware page walk filling one TLB entry
    user_access: int = 2        # a user load or store that hits the TLB
    # IPIs (x86 shootdown, one target)
    ipi_send: int = 250         # building the mask and writing the APIC ICR
    ipi_delivery: int = 300     # wire time until the target takes the interrupt
    ipi_handler: int = 200      # interrupt entry and exit on the target, around the flush
    ipi_ack: int = 100          # the target's acknowledgement reaching the waiting sender
    # locks and scheduling
    lock: int = 20              # uncontended spin_lock / mutex_lock / down_read
    unlock: int = 15
    context_switch: int = 1500  # schedule() + switch_to, without the TLB cost of switch_mm
    syscall: int = 100          # syscall entry and exit
    fault_entry: int = 800      # #PF exception entry, handle_mm_fault lookup, exit
    cond_resched: int = 5       # a cond_resched() that does not schedule
    # the latency-sensitive task woken periodically on every CPU
    latency_period: int = 200_000
    latency_run: int = 2_000

    # --- measured by `mmugather calibrate` (issue 22), each from its own host probe (host/calibrate.py).
    # 0 in these reference defaults, whose `syscall` and `fault_entry` figures already stand for the whole
    # fixed cost; a calibrated file sets them, and the charges sit where the kernel spends the time.
    mmap_call: int = 0          # mmap_region(): get_unmapped_area, vm_area_alloc, vma insertion (under the lock)
    munmap_call: int = 0        # __vm_munmap(): VMA lookup, split and detach, remove_vma (under the lock)
    madvise_call: int = 0       # madvise_lock() onwards: VMA walk, madvise_dontneed_single_vma() set-up
    mprotect_call: int = 0      # mprotect_fixup(): VMA lookup, vma_modify_flags() (under the lock)
    file_fault: int = 0         # __do_fault() -> filemap_fault(): page-cache lookup, folio lock, per file fault
    page_mkwrite: int = 0       # do_shared_fault(): ->page_mkwrite() and fault_dirty_shared_page() (the fs)
    ipi_idle_exit: int = 0      # an IPI that finds its target idle: leaving the idle loop (HLT; a vCPU wake on KVM)
    wp_copy: int = 0            # wp_page_copy() of a mapped page (not the zero page): the copy, the old folio's rmap
    map_pages: int = 0          # do_fault_around() -> filemap_map_pages() of a read fault, per call, beyond
    #                             fault_entry and pte_set: rcu, the xarray walk's start, the PTE table lookup and
    #                             lock, the mmap_miss update (a read fault in a 1-page VMA: a window of 1)
    map_pages_folio: int = 0    # filemap_map_pages(), per cached folio of the window next_uptodate_folio() takes
    #                             (folio_try_get, folio_trylock, the pte_none() check, folio_unlock, folio_put),
    #                             mapped by this fault or not
    # PMD-mapped file folios (mm/huge_memory.py; a file's `pmd_folios_from`), each from its own host probe
    page_mkwrite_pmd: int = 0   # ->page_mkwrite() of a PMD-sized folio beyond a 1-page one's (ext4's
    #                             block_page_mkwrite() walks every block of the folio: 512, not 1)
    pmd_map: int = 0            # do_set_pmd(): map a PMD-sized folio by one PMD (rmap, counters, set_pmd_at), and
    #                             the PTE table the fault preallocates and frees unused around it
    split_huge_pmd: int = 0     # __split_huge_pmd() of a file PMD, less its TLB flush: clear, rmap, folio_put

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{f.name}: expected a non-negative integer number of ns, got {value!r}")
        if self.latency_period <= 0:
            raise ValueError("latency_period: expected a positive number of ns")


DEFAULT_COSTS = Costs()     # (frozen: one instance serves every run that overrides nothing)


def load_costs(path: str | Path | None) -> Costs:
    """Return the default costs, overridden by the keys of a TOML or JSON cost file when one is given."""
    if path is None:
        return DEFAULT_COSTS
    p = Path(path)
    text = read_text_input(p, "cost file")
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a table of cost names to nanoseconds")
    data = data.get("costs", data)
    known = {f.name for f in fields(Costs)}
    for key in data:
        if key not in known:
            raise InputError(f"{p}: unknown cost '{key}' (expected one of: {', '.join(sorted(known))})")
    try:
        return replace(Costs(), **data)
    except ValueError as e:
        raise InputError(f"{p}: {e}") from None
