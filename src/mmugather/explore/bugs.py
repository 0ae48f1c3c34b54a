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
        from mmugather.policies import get_policy
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
        fixed_in="2013 (the release was not checked)",
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


def available() -> list[Bug]:
    """The entries whose policy and fix switches exist in this build."""
    from mmugather.policies import POLICIES
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
            "what": bug.what, "policy": bug.policy, "buggy_without_fixes": list(bug.buggy_without),
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
