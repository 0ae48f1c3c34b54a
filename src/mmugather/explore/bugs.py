"""The bug catalogue: real mmu_gather bugs of the Linux kernel, each a scenario the explorer runs on the
kernel variant that had the bug and on the one that fixed it.

An entry is data. The two variants are one policy with named fix switches off (`without_fixes`, the
switches each policy declares in `fixes`); the buggy variant must show a violation of the expected kind,
the fixed one none within the stated bound. Adding a bug is adding a `Bug(...)` to CATALOGUE; an entry
whose policy or fix switch does not exist (yet) is left out of `available()`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mmugather.errors import InputError
from mmugather.explore import search
from mmugather.explore.target import KernelTarget
from mmugather.policies import POLICIES, get_policy
from mmugather.workloads.scenario import parse_scenario


@dataclass(frozen=True)
class Bug:
    name: str
    year: int
    commits: tuple[str, ...]
    title: str                         # the fix's subject line
    fixed_in: str                      # the first release with the fix
    introduced: str                    # the commit (and release) that brought the bug, as the sources say
    what: str                          # the race, in kernel terms
    scenario: dict                     # a scenario as data (docs/scenarios.md)
    policy: str
    buggy_without: tuple[str, ...]     # fix switches off in the buggy variant
    fixed_without: tuple[str, ...] = ()
    expect: str = "stale-tlb-use-after-free"    # the violation kind the buggy variant shows
    arch: str | None = None
    max_preemptions: int = 2
    budget: int = 100_000
    max_depth: int = 10_000            # steps per execution (a big unmap takes one per page)
    slow_max_preemptions: int = 3      # the longer bound of the slow tests
    notes: str = ""

    def variant(self, fixed: bool) -> KernelTarget:
        sc = parse_scenario(self.scenario, f"bug {self.name}")
        return KernelTarget(sc, get_policy(self.policy), arch=self.arch,
                            without_fixes=self.fixed_without if fixed else self.buggy_without)


def _scenario(name: str, policy: str, vmas: list[dict[str, Any]], *programs: tuple[int, list[dict[str, Any]]],
              cpus: int = 2, preempt: str = "voluntary", files: tuple[str, ...] = (), **machine: Any) -> dict:
    """A catalogue scenario as data: one process "app" with `vmas` and a thread per (cpu, program), on a
    machine of `cpus` CPUs with `machine`'s other settings; `files`: the names of its [[files]]."""
    sc: dict[str, Any] = {"name": name, "machine": {"cpus": cpus, "preempt": preempt, "policy": policy, **machine}}
    if files:
        sc["files"] = [{"name": f} for f in files]
    sc["process"] = [{"name": "app", "vma": vmas,
                      "thread": [{"cpu": cpu, "program": program} for cpu, program in programs]}]
    return sc


def _read(vma: str) -> dict[str, Any]:
    """A touch op that reads every page of `vma`."""
    return {"op": "touch", "vma": vma, "write": False}


def _read_first(vma: str) -> dict[str, Any]:
    """A touch op that reads the first page of `vma`."""
    return {"op": "touch", "vma": vma, "size": "4KiB", "write": False}


def _two_tables() -> list[dict[str, Any]]:
    """Two one-page VMAs, a and b, 2 MiB apart: each in a page table of its own."""
    return [{"name": "a", "size": "4KiB", "start": 0x10000000, "populate": True},
            {"name": "b", "size": "4KiB", "start": 0x10200000, "populate": True}]


CATALOGUE: list[Bug] = [
    Bug(
        name="fast-mode-3.0",
        year=2013,
        commits=("29eb77825cc7",),
        title="arch, mm: Remove tlb_fast_mode()",
        fixed_in=("v3.10 cycle: posted 2013-06-05 at Linus's request during v3.10-rc "
                  "(linux-mm, <20130605102650.GU8923@twins.programming.kicks-ass.net>); the tag was not checked"),
        introduced="d16dfc550f53 (v3.0): the preemptible gather, fast mode kept",
        what=("With one possible CPU, 3.0's gather is in fast mode: zap_pte_range() frees each page at once, "
              "before any flush. 3.0 made the gather preemptible, so cond_resched() in zap_pmd_range() can "
              "switch to another thread of the same process on that CPU, which returns to user space with "
              "the CPU's TLB still mapping the freed pages."),
        scenario=_scenario("fast-mode", "3.0", [{"name": "a", "size": "16KiB", "populate": True}],
                           (0, [_read("a"), {"op": "munmap", "vma": "a"}, {"op": "exit"}]),
                           (0, [_read("a")]), cpus=1),
        policy="3.0",
        buggy_without=(),
        fixed_without=("tlb_fast_mode",),
        notes=("3.0 as released is the buggy variant; the fixed one switches fast mode off "
               "(`--without-fix tlb_fast_mode`, an inverted switch: see policies/linux_3_0.py)."),
    ),
    Bug(
        name="madv-dontneed-flush-miss",
        year=2017,
        commits=("99baac21e458", "56236a59556c"),
        title="mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
        fixed_in="v4.13 (99baac21e458), v4.14 (56236a59556c)",
        introduced="not recorded here (MADV_DONTNEED zaps under mmap_sem held for reading)",
        what=("Two threads MADV_DONTNEED one range under mmap_sem held for reading. The first clears the "
              "PTEs and batches the pages; the second finds the PTEs none, gathers nothing and returns "
              "without a flush while the first has not flushed yet: a stale writable TLB entry survives "
              "the call that was to drop it. Fixed by counting gathers in flight (tlb_flush_pending) and "
              "forcing a flush in tlb_finish_mmu() when another one is running."),
        scenario=_scenario("parallel-dontneed", "6.18", [{"name": "buf", "size": "8KiB", "populate": True}],
                           *[(cpu, [{"op": "touch", "vma": "buf"}, {"op": "madvise", "vma": "buf"},
                                    {"op": "touch", "vma": "buf"}]) for cpu in (0, 1)]),
        policy="6.18",
        buggy_without=("tlb_flush_pending",),
        expect="stale-tlb-after-return",
    ),
    Bug(
        name="mremap-flush-after-unlock",
        year=2018,
        commits=("eb66ae030829",),
        title="mremap: properly flush TLB before releasing the page (CVE-2018-18281)",
        fixed_in="v4.20",
        introduced="not recorded here (the flush after the PTE locks drop is in v3.7 to v4.19)",
        what=("move_ptes() moves the PTEs of a shared file mapping to the new address, drops the PTE and "
              "i_mmap locks, and only then flushes the old range. In that window truncate() finds the page "
              "at its new address, zaps it there (flushing the new address only) and frees it, while the "
              "mremap caller's TLB still maps the page at the old address."),
        scenario=_scenario("mremap-vs-truncate", "6.18",
                           [{"name": "f", "size": "4KiB", "kind": "file", "file": "F", "shared": True,
                             "populate": True},
                            {"name": "d", "size": "4KiB", "writable": False}],
                           (0, [_read("f"), {"op": "mremap", "vma": "f", "to": "d"}]),
                           (1, [{"op": "truncate", "file": "F", "size": 0}]), files=("F",)),
        policy="6.18",
        buggy_without=("mremap_flush",),
    ),
    Bug(
        name="nested-flush-reset-range",
        year=2019,
        commits=("7a30df49f63a",),
        title="mm: mmu_gather: remove __tlb_reset_range() for force flush",
        fixed_in="v5.2",
        introduced="dd2283f2605e: munmap frees page tables under mmap_sem held for reading",
        what=("munmap() frees page tables under mmap_lock held for reading (since dd2283f2605e), so a "
              "MADV_DONTNEED can run beside it. The munmap's gather, finishing while the madvise's is in "
              "flight, forces a flush but first resets its range, dropping freed_tables: on arm64 the flush "
              "becomes a last-level TLBI that leaves the other CPU's walk cache pointing into the page table "
              "that is then freed."),
        scenario=_scenario("munmap-beside-dontneed", "6.18", _two_tables(),
                           (0, [_read("b"), {"op": "madvise", "vma": "a"}, {"op": "compute", "ns": 1000},
                                _read("b")]),
                           (1, [{"op": "munmap", "vma": "b"}])),
        policy="6.18",
        arch="arm64",
        buggy_without=("no_reset_range",),
        expect="page-table-use-after-free",
        max_preemptions=3,
        slow_max_preemptions=4,
        notes=("Three preemptions: the madvise must be in flight (gathered, not finished) when the munmap "
               "finishes. The compute step lets RCU's grace period end, so the table is really freed."),
    ),
    Bug(
        name="forced-flush-wrong-range",
        year=2013,
        commits=("e6c495a96ce0", "2b047252d087"),
        title="mm: Fix the TLB range flushed when __tlb_remove_page() runs out of slots",
        fixed_in="v3.11",
        introduced="597e1c3580b7 (v3.6): mm/mmu_gather: enable tlb flush range in generic mmu_gather",
        what=("When the gather ran out of slots mid-table, zap_pte_range() broke out to flush and free, but "
              "set the range to flush to [addr, end): the PTEs it had not zapped yet. The pages it had zapped "
              "were freed with their TLB entries still live on other CPUs. Rare while only a failed "
              "GFP_NOWAIT allocation forced the break; 53a59fc67f97's batch limit made it routine on large "
              "unmaps (Ben Tebulin's git corruption, 2013)."),
        scenario=_scenario("munmap-gather-full", "6.18", [{"name": "a", "size": "32KiB", "populate": True}],
                           (1, [_read("a"), {"op": "compute", "ns": 1000}]),
                           (0, [{"op": "munmap", "vma": "a"}]), fail_nowait=1.0),
        policy="6.18",
        buggy_without=("force_flush_range",),
        max_preemptions=1,
        notes=("fail_nowait = 1.0: no batch page can be had, so the 8-entry local bundle fills after 7 pages "
               "and forces the break, as MAX_GATHER_BATCH_COUNT did after ~10k pages once 53a59fc67f97 "
               "bounded the batches."),
    ),
    Bug(
        name="unlimited-batching-soft-lockup",
        year=2012,
        commits=("53a59fc67f97",),
        title="mm: limit mmu_gather batching to fix soft lockups on !CONFIG_PREEMPT",
        fixed_in="v3.8",
        introduced="e303297e6c3a (v3.0): mm: extended batches for generic mmu_gather",
        what=("Since e303297e6c3a (v3.0) the gather chains a new batch page whenever one fills, as long as "
              "GFP_NOWAIT allocations succeed, and frees every gathered page in one tlb_flush_mmu() at the end "
              "of the unmap. free_pages_and_swap_cache() has no scheduling point, so on a kernel without "
              "CONFIG_PREEMPT a big munmap or exit keeps the CPU for as long as it takes to free all of it: "
              "soft lockups on large machines. The fix caps the chain at MAX_GATHER_BATCH_COUNT batches "
              "(~10k pages), which makes zap_pte_range() break out, flush and free, and reach the next "
              "cond_resched()."),
        scenario=_scenario("munmap-64m-preempt-none", "3.0", [{"name": "a", "size": "64MiB", "populate": True}],
                           (0, [{"op": "munmap", "vma": "a"}]), preempt="none", softlockup_ns=2_000_000),
        policy="3.0",
        buggy_without=(),
        fixed_without=("unlimited_batching",),
        expect="soft-lockup",
        max_preemptions=1,
        slow_max_preemptions=1,
        budget=100,
        max_depth=40_000,
        notes=("Inverted switch: 3.0 as released is the buggy variant. The watchdog is scaled: "
               "softlockup_ns = 2 ms against the kernel's 20 s, so that freeing the fix's ~10k pages at "
               "once (1.5 ms at 150 ns a page) passes and the 16k pages of a 64 MiB munmap (2.5 ms) do not. "
               "One thread: no interleaving matters, the default schedule shows it."),
    ),
    Bug(
        name="radix-table-free-no-invalidate",
        year=2020,
        commits=("0ed1325967ab",),
        title="mm/mmu_gather: invalidate TLB correctly on batch allocation failure and flush",
        fixed_in="v5.5",
        introduced="a46cc7a90fd8 (v4.14): powerpc/mm/radix: Improve TLB/PWC flushes",
        what=("powerpc selected HAVE_RCU_TABLE_NO_INVALIDATE, right for the hash MMU (no hardware walker of "
              "the Linux page tables) but wrong for radix, whose walker caches walks in the PWC. When no "
              "table batch page could be had, tlb_remove_table_one() IPI-synced and freed the table at "
              "once, with no TLB/PWC invalidation first. The fix made the choice at run time: "
              "tlb_needs_table_invalidate() is radix_enabled()."),
        scenario=_scenario("munmap-table-batch-fails-radix", "6.18", _two_tables(),
                           (1, [_read("b"), {"op": "compute", "ns": 1000}, _read("a")]),
                           (0, [{"op": "munmap", "vma": "b"}]), fail_nowait=1.0),
        policy="6.18",
        arch="ppc64-radix",
        buggy_without=("table_invalidate",),
        expect="page-table-use-after-free",
        notes=("fail_nowait = 1.0 forces the table-batch allocation failure. powerpc has no CONFIG_PT_RECLAIM, "
               "so 6.18's tlb_remove_table_one() is the v5.4 one: tlb_remove_table_sync_one(), then free."),
    ),
    Bug(
        name="lazy-mm-users-shortcut",
        year=2018,
        commits=("a6f572084fbe",),
        title="mm/tlb: Remove tlb_remove_table() non-concurrent condition",
        fixed_in="v4.19",
        introduced="267239116987 (v3.0): mm, powerpc: move the RCU page-table freeing into generic code",
        what=("tlb_remove_table() freed a page table at once when mm_users < 2: with one user there could be "
              "no concurrent walker. But mm_users does not count CPUs that use the mm lazily (a thread that "
              "exited, a kernel thread): their paging-structure caches can still walk the mm speculatively, "
              "so the table was freed under them with no flush."),
        scenario=_scenario("thread-exits-then-munmap", "6.18", _two_tables(),
                           (0, [{"op": "sleep", "ns": 1000}, {"op": "munmap", "vma": "b"}]),
                           (1, [_read("b"), {"op": "exit_thread"}])),
        policy="6.18",
        buggy_without=("mm_users_shortcut",),
        expect="page-table-use-after-free",
        notes=("6.18 with v3.0-v4.18's mm_users test put back (x86 selected RCU table freeing from v4.14, "
               "and its lazy CPUs keep paging-structure caches)."),
    ),
]


def _device_scenario(name: str, vmas: list[dict[str, Any]], *programs: tuple[int, list[dict[str, Any]]],
                     device: str, **kw: Any) -> dict:
    """A catalogue scenario (as `_scenario`, policy 6.18) whose one file, `device`, is a device file."""
    sc = _scenario(name, "6.18", vmas, *programs, **kw)
    sc["files"] = [{"name": device, "device": True}]
    return sc


def _writeback_scenario(name: str, mapped_elsewhere: bool) -> dict:
    """Process "app" maps page 0 of file F shared and writable: a thread on CPU 1 stores to it, does user
    work, stores again; a thread on CPU 0 MADV_DONTNEEDs it. Process "sync" (mapping the page too, at
    0x20000000, when `mapped_elsewhere`) fsync()s F on CPU 2."""
    f = {"name": "f", "size": "4KiB", "kind": "file", "file": "F", "shared": True, "populate": True}
    store = {"op": "touch", "vma": "f", "write": True}
    sc = _scenario(name, "6.18", [f], (1, [store, {"op": "compute", "ns": 1000}, store]),
                   (0, [{"op": "madvise", "vma": "f"}]), cpus=3, files=("F",))
    sc["process"].append({"name": "sync", "vma": [{**f, "name": "g", "start": 0x20000000}] if mapped_elsewhere else [],
                          "thread": [{"cpu": 2, "program": [{"op": "fsync", "file": "F"}]}]})
    return sc


CATALOGUE += [
    Bug(
        name="pfnmap-munmap-vs-revoke",
        year=2022,
        commits=("b67fbebd4cf9",),
        title="mmu_gather: Force tlb-flush VM_PFNMAP vmas (CVE-2022-39188)",
        fixed_in="v5.19",
        introduced="no Fixes: tag: munmap() has unlinked VMAs from i_mmap before its flush since long ago; on x86 "
                   "MMU_GATHER_MERGE_VMAS also took away tlb_end_vma()'s per-VMA flush",
        what=("munmap() of a VM_PFNMAP VMA (a driver's buffer, mapped with remap_pfn_range()) clears its PTEs, "
              "and free_pgtables() unlinks the VMA from the device file's i_mmap before tlb_finish_mmu() flushes "
              "(x86 merges VMAs: tlb_end_vma() does not flush). A driver revoking the buffer meanwhile runs "
              "unmap_mapping_range(), finds no VMA, returns at once and frees the memory while TLBs still map "
              "it. The fix flushes when a VM_PFNMAP VMA is unmapped (tlb->vma_pfn), before it leaves i_mmap."),
        scenario=_device_scenario("munmap-pfnmap-vs-revoke",
                                  [{"name": "d", "size": "4KiB", "kind": "pfnmap", "file": "dev", "shared": True,
                                    "start": 0x10000000}],
                                  (0, [_read("d"), {"op": "munmap", "vma": "d"}]),
                                  (1, [{"op": "revoke", "file": "dev"}]), device="dev"),
        policy="6.18",
        arch="x86",
        buggy_without=("pfnmap_flush",),
        notes=("PFN maps are modelled on 6.18 only (special PTEs in its zap walk). The 6.18 form of the fix is "
               "tlb_free_vmas() in free_pgtables() (2025); v5.19's was in tlb_end_vma(): both flush before "
               "unlink_file_vma()."),
    ),
    Bug(
        name="khugepaged-gup-fast-free",
        year=2022,
        commits=("2ba99c5e0881",),
        title="mm/khugepaged: fix GUP-fast interaction by sending IPI",
        fixed_in=("v6.1: pushed to Linus's master 2022-12-02 in mm-hotfixes-stable-2022-12-02 (git post-receive "
                  "a4412fdd49dc..bdaa78c6aa86), between v6.1-rc7 and the v6.1 release"),
        introduced="ba76149f47d8 (v2.6.38): thp: khugepaged (the Fixes: tag)",
        what=("collapse_and_free_pmd() (MADV_COLLAPSE or khugepaged retracting the PTE table of a file THP) "
              "clears the PMD with pmdp_collapse_flush() and frees the table with pte_free() at once. gup_fast "
              "on another CPU walks page tables locklessly with IRQs off; where the TLB flush needs no IPI "
              "(arm64's broadcast TLBI, paravirt flushes) nothing waits for it, and it reads the freed table. "
              "The fix calls tlb_remove_table_sync_one() before the free: an IPI that the walker's CPU answers "
              "only after its IRQs-off walk."),
        scenario=_scenario("madv-collapse-vs-gup-fast", "6.18",
                           [{"name": "f", "size": "2MiB", "kind": "file", "file": "F", "shared": True,
                             "start": 0x10000000, "populate": [(0, 16384)]}],
                           (0, [{"op": "madvise", "vma": "f", "advice": "collapse"}]),
                           (1, [{"op": "gup_fast", "vma": "f", "size": "16KiB"}]), files=("F",)),
        policy="6.18",
        arch="arm64",
        buggy_without=("collapse_sync",),
        expect="page-table-use-after-free",
        notes=("The collapse path is v6.2's (mm/khugepaged.py; v6.5+ frees with pte_free_defer()). On x86 the "
               "flush IPI of pmdp_collapse_flush() already waits for the walker, so the buggy variant is clean "
               "there: the bug needs arm64 (or a paravirt flush)."),
    ),
    Bug(
        name="rmap-removed-before-flush",
        year=2022,
        commits=("5df397dec7c4",),
        title="mm: delay page_remove_rmap() until after the TLB has been flushed",
        fixed_in="v6.2",
        introduced="none named: zap_pte_range() removed the rmap before the flush since rmap existed; "
                   "1cf35d47712d (v3.15) closed the case of a page still mapped elsewhere",
        what=("zap_pte_range() cleared a dirty PTE of a shared file page, set_page_dirty() and "
              "page_remove_rmap() at once, and flushed the TLB only at the end of the pass. Writeback's "
              "folio_mkclean() skips a folio mapped nowhere, so it neither waited for the PTE lock nor found "
              "the mapping: the page was cleaned and written while another CPU still held a writable TLB "
              "entry for it, and that CPU's next store landed in a clean page: lost (Nadav Amit's report). "
              "The fix batches the rmap removal with the page and does it after the flush "
              "(tlb_delay_rmap(), tlb_flush_rmaps())."),
        scenario=_writeback_scenario("dontneed-vs-fsync", mapped_elsewhere=False),
        policy="6.18",
        buggy_without=("delay_rmap",),
        expect="lost-write",
        max_preemptions=1,
        slow_max_preemptions=2,
        notes=("6.18 with the v3.15-v6.1 zap put back (`--without-fix delay_rmap`: the dirty file PTE forces "
               "the flush under the PTE lock, the rmap goes before it). The writer stores, does user work, "
               "stores again; the fsync runs in another process."),
    ),
    Bug(
        name="dirty-pte-flush-after-unlock",
        year=2014,
        commits=("1cf35d47712d",),
        title="mm: split 'tlb_flush_mmu()' into tlb flushing and memory freeing parts",
        fixed_in="v3.15",
        introduced="none named: the flush came after the PTE lock dropped since d16dfc550f53 (v3.0) stopped "
                   "flushing full batches under it",
        what=("zap_pte_range() cleared a dirty PTE of a shared file page, set_page_dirty() and "
              "page_remove_rmap(), dropped the PTE lock, and flushed the TLB later (next full batch or "
              "tlb_finish_mmu()). The page is still mapped by another process, so writeback's page_mkclean() "
              "walks i_mmap, takes the (free) PTE lock, finds the PTE gone and cleans the page while a CPU "
              "still holds a writable TLB entry for it: its next store is lost. The fix splits tlb_flush_mmu() "
              "so that a dirty shared PTE forces tlb_flush_mmu_tlbonly() before the PTE lock drops: "
              "page_mkclean() waits for the flush."),
        scenario=_writeback_scenario("dontneed-vs-fsync-mapped-elsewhere", mapped_elsewhere=True),
        policy="6.18",
        buggy_without=("delay_rmap", "dirty_force_flush"),
        fixed_without=("delay_rmap",),
        expect="lost-write",
        max_preemptions=1,
        slow_max_preemptions=2,
        notes=("6.18 with the pre-v3.15 zap put back: no forced flush for a dirty file PTE, the rmap "
               "removed at once. The fixed variant is v3.15-v6.1 (still without 5df397dec7c4, which this "
               "scenario does not need: process \"sync\" keeps the page mapped)."),
    ),
]


CATALOGUE += [
    Bug(
        name="table-free-no-invalidate",
        year=2018,
        commits=("d86564a2f085",),
        title="mm/tlb, x86/mm: Support invalidating TLB caches for RCU_TABLE_FREE",
        fixed_in="v4.19",
        introduced="no Fixes: tag; on x86, 9e52fc2b50de (v4.14): x86/mm: Enable RCU based page table freeing "
                   "(CONFIG_HAVE_RCU_TABLE_FREE=y), for paravirt flushes that send no IPI",
        what=("When no page can be had for a table batch, tlb_remove_table() hands the one table to "
              "tlb_remove_table_one(), which waits for software walkers only (an IPI sync in v4.14-v4.19, a grace "
              "period under 6.18's PT_RECLAIM) and frees it. Nothing flushed the other CPUs' paging-structure "
              "caches first: RCU table freeing came from PowerPC-hash and Sparc-hash, which have none. x86 "
              "selected it from v4.14, and its CPUs still cached walks through the freed table. The fix calls "
              "tlb_table_invalidate() (tlb_flush_mmu_tlbonly()) before the single free and the batch's RCU."),
        scenario=_scenario("dontneed-table-batch-fails", "6.18",
                           [{"name": "a", "size": "2MiB", "start": 0x10000000}],
                           (1, [_read_first("a"), {"op": "compute", "ns": 1000}, _read_first("a")]),
                           (0, [{"op": "madvise", "vma": "a"}]),
                           (0, [{"op": "compute", "ns": 1000}]), fail_nowait=1.0),
        policy="6.18",
        arch="x86",
        buggy_without=("table_invalidate",),
        expect="page-table-use-after-free",
        max_preemptions=1,
        notes=("fail_nowait = 1.0 makes every GFP_NOWAIT allocation fail (the !*batch slow path Jann Horn hit). "
               "The table is freed by MADV_DONTNEED's PT_RECLAIM (6.14+), through call_rcu: the grace period "
               "ends when CPU 0 switches to its other thread at zap_pmd_range()'s cond_resched() (a switch "
               "the explorer may choose there, standing for a scheduler tick that set need_resched). Same fix "
               "switch as radix-table-free-no-invalidate (0ed1325967ab inverted this commit's config)."),
    ),
]


def available() -> list[Bug]:
    """The entries whose policy and fix switches exist in this build."""
    out = []
    for bug in CATALOGUE:
        cls = POLICIES.get(bug.policy)
        if cls is not None and set(bug.buggy_without + bug.fixed_without) <= set(cls.fixes):
            out.append(bug)
    return out


def get_bug(name: str) -> Bug:
    bugs = {b.name: b for b in available()}
    if name not in bugs:
        raise InputError(f"unknown bug '{name}' (expected one of: {', '.join(bugs) or 'none'})")
    return bugs[name]


def describe(bug: Bug) -> dict:
    return {"name": bug.name, "year": bug.year, "commits": list(bug.commits), "title": bug.title,
            "fixed_in": bug.fixed_in, "introduced": bug.introduced,
            "what": bug.what, "policy": bug.policy,
            "arch": bug.arch or next(iter(get_policy(bug.policy).arches)),   # Simulation's default arch
            "buggy_without_fixes": list(bug.buggy_without),
            "fixed_without_fixes": list(bug.fixed_without), "expect": bug.expect,
            "bound": {"strategy": "exhaustive", "max_preemptions": bug.max_preemptions, "budget": bug.budget,
                      "max_depth": bug.max_depth},
            "notes": bug.notes}


def run_bug(bug: Bug, *, max_preemptions: int | None = None, budget: int | None = None, por: bool = True,
            progress=None) -> dict:
    """Explore the buggy variant (it must fail with `expect`) and the fixed one (it must pass); `por` False:
    without partial-order reduction (sleep sets). Returns {"name", "commits", "buggy": {...}, "fixed":
    {...}, "ok"}."""
    k = bug.max_preemptions if max_preemptions is None else max_preemptions
    n = bug.budget if budget is None else budget
    out: dict[str, Any] = {"name": bug.name, "commits": list(bug.commits), "year": bug.year, "title": bug.title}
    for key, fixed in (("buggy", False), ("fixed", True)):
        target = bug.variant(fixed)
        t0 = time.perf_counter()
        res = search.exhaustive(target, max_preemptions=k, budget=n, max_depth=bug.max_depth,
                                sleep_sets=por, progress=progress)
        seconds = time.perf_counter() - t0
        part = {"violation": res.violation, "seconds": round(seconds, 3), "transitions": res.transitions,
                "executions": res.executions, "pruned": res.pruned, "slept": res.slept, "por": por,
                "without_fixes": list(target.without_fixes)}
        if fixed:
            part["bound"] = {"strategy": "exhaustive", "max_preemptions": k, "budget": n,
                             "covered": res.covered}
        out[key] = part
    buggy, fixed = out["buggy"]["violation"], out["fixed"]["violation"]
    out["ok"] = bool(buggy is not None and buggy["kind"] == bug.expect and fixed is None
                     and out["fixed"]["bound"]["covered"])
    return out
