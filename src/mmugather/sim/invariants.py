"""The invariants, checked at every step and always on.

Invariant #1 is the kernel's own (include/asm-generic/tlb.h): unhook the page, invalidate every TLB that
may hold a translation to it, and only then free it. Kinds reported:
- `stale-tlb-use-after-free`: a frame was freed while a TLB entry that some CPU can still use maps it.
- `page-table-use-after-free`: a page-table page was freed while a walker or a paging-structure cache can
  still reach it.
- `sleep-in-atomic`: a sleeping operation (or a preemption point) while preempt_count > 0 or IRQs are off.
- `leak`: frames, page tables or gather batch pages not returned, or RSS counters unbalanced, after teardown.

Liveness: an entry on another CPU is live at once (that CPU may be running user code of the mm right
now, or may switch back to it without a flush). An entry on the freeing CPU itself cannot be used by the
kernel code that is running there; it becomes a violation only if that CPU returns to user code of the mm
(or resumes a thread of it) before a flush drops it: the freed frame is then reachable by user code.
"""
from __future__ import annotations

from mmugather.mm.page_alloc import ANON, BATCH, FILE, KIND_NAMES, PGTABLE

MAX_RECORDED = 200


class Invariants:
    """Holds the reverse maps (frame -> number of TLB/PWC entries on all CPUs) and the violation list."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.cpus: list = []
        self.alloc = None
        self.tlb_refs: dict[int, int] = {}
        self.pwc_refs: dict[int, int] = {}
        self.violations: list[dict] = []
        self.total = 0
        self._seen: set = set()

    def report(self, kind: str, cpu: int, detail: str, key=None) -> None:
        key = (kind, cpu, key if key is not None else detail)
        if key in self._seen:
            return
        self._seen.add(key)
        self.total += 1
        if len(self.violations) < MAX_RECORDED:
            self.violations.append({"kind": kind, "cpu": cpu, "detail": detail})

    # ---------------------------------------------------------------- frees
    def on_free(self, c, pfn: int, kind: int) -> None:
        """Called by PageAlloc.free_page for every frame freed."""
        m = self.metrics
        if kind == PGTABLE:
            m.page_tables_freed += 1
            if pfn in self.pwc_refs:
                self._freed_while_cached(c, pfn)
        else:
            if kind != BATCH:
                m.pages_freed += 1
            if pfn in self.tlb_refs:
                self._freed_while_mapped(c, pfn)
        if c is not None and c.ptl_held and kind != BATCH:
            m.frees_under_pte_lock += 1

    def on_free_many(self, c, freed: list[tuple[int, int]]) -> None:
        """on_free() for a batch of (pfn, kind) freed together by release_pages()."""
        m = self.metrics
        tlb_refs, pwc_refs = self.tlb_refs, self.pwc_refs
        tables = 0
        for pfn, kind in freed:
            if kind == PGTABLE:
                tables += 1
                if pfn in pwc_refs:
                    self._freed_while_cached(c, pfn)
            elif pfn in tlb_refs:
                self._freed_while_mapped(c, pfn)
        m.page_tables_freed += tables
        m.pages_freed += len(freed) - tables
        if c is not None and c.ptl_held:
            m.frees_under_pte_lock += len(freed) - tables

    def _freed_while_mapped(self, c, pfn: int) -> None:
        for x in self.cpus:
            vpns = [vpn for vpn, v in x.tlb.items() if v >> 1 == pfn]
            if not vpns:
                continue
            if x is c:
                x.dangling.add(pfn)
                continue
            who = f"CPU {c.id}" if c is not None else "set-up"
            self.report("stale-tlb-use-after-free", x.id,
                        f"pfn {pfn} freed by {who} at {c.clock if c else 0} ns while CPU {x.id}'s TLB still "
                        f"maps user address {vpns[0] << 12:#x} to it", key=pfn)

    def _freed_while_cached(self, c, pfn: int) -> None:
        for x in self.cpus:
            keys = [k for k, t in x.pwc.items() if t.pfn == pfn]
            if not keys:
                continue
            if x is c:
                x.dangling.add(pfn)
                continue
            self.report("page-table-use-after-free", x.id,
                        f"page table pfn {pfn} (PTEs of {keys[0] << 21:#x}) freed by CPU {c.id if c else '-'} at "
                        f"{c.clock if c else 0} ns while CPU {x.id}'s paging-structure cache still points to it",
                        key=pfn)

    # ---------------------------------------------------------------- scheduling hooks
    def resume_user(self, c, task) -> None:
        """A CPU is about to run user code of task.mm: its own stale entries to freed frames become usable."""
        if not c.dangling or c.loaded_mm is not task.mm:
            return
        for pfn in sorted(c.dangling):
            kind = "page-table-use-after-free" if any(t.pfn == pfn for t in c.pwc.values()) \
                else "stale-tlb-use-after-free"
            self.report(kind, c.id, f"CPU {c.id} resumed user code of {task} at {c.clock} ns with its TLB still "
                                    f"mapping freed pfn {pfn} (freed on this CPU before the flush)", key=pfn)
        c.dangling.clear()

    def sleep_in_atomic(self, c, what: str) -> None:
        self.report("sleep-in-atomic", c.id,
                    f"{what} on CPU {c.id} at {c.clock} ns with preempt_count={c.preempt_count}"
                    f"{' and IRQs off' if c.irqs_off else ''}", key=what)

    # ---------------------------------------------------------------- end of run
    def check_leaks(self, mms: list, files: list, alloc) -> None:
        """After every task exited: each exited mm returned everything; frame counts match what is still
        legitimately held (live mms' pages and tables, page caches)."""
        live_anon = live_file_maps = live_tables = 0
        for mm in mms:
            if mm.exited:
                if mm.rss != [0, 0]:
                    self.report("leak", -1, f"mm {mm.id} exited with RSS counters file={mm.rss[0]} "
                                            f"anon={mm.rss[1]}")
                if mm.pte_tables or mm.nr_ptes or mm.pgd.entries:
                    self.report("leak", -1, f"mm {mm.id} exited with {len(mm.pte_tables)} PTE tables still "
                                            f"hooked (nr_ptes={mm.nr_ptes})")
                continue
            live_anon += mm.rss[1]
            live_file_maps += mm.rss[0]
            live_tables += 1 + _count_tables(mm)
        cached = sum(len(f.page_cache) for f in files)
        used = alloc.nr_used
        expected = {ANON: live_anon, PGTABLE: live_tables, FILE: cached, BATCH: 0}
        for kind, want in expected.items():
            if used[kind] != want:
                self.report("leak", -1, f"{used[kind]} {KIND_NAMES[kind]} frames in use after teardown, "
                                        f"expected {want}")


def _count_tables(mm) -> int:
    n = 0
    for pud in mm.pgd.entries.values():
        n += 1
        for pmd in pud.entries.values():
            n += 1 + len(pmd.entries)
    return n
