"""The invariants, checked at every step and always on.

Invariant #1 is the kernel's own (include/asm-generic/tlb.h): unhook the page, invalidate every TLB that
may hold a translation to it, and only then free it. Kinds reported:
- `stale-tlb-use-after-free`: a frame was freed while a TLB entry that some CPU can still use maps it.
- `page-table-use-after-free`: a page-table page was freed while a walker or a paging-structure cache can
  still reach it.
- `stale-tlb-after-return`: munmap, madvise or mprotect returned to user space while some CPU still held
  a usable TLB entry in its range that the page tables no longer grant.
- `sleep-in-atomic`: a sleeping operation (or a preemption point) while preempt_count > 0 or IRQs are off.
- `leak`: frames, page tables or gather batch pages not returned, or RSS counters unbalanced, after teardown.
- `soft-lockup` (only with machine.softlockup_ns set): a CPU ran kernel code for longer than that without
  passing a point where it could schedule (reported by the soft-lockup watchdog, sim/watchdog.py).
- `lost-write` (checked from the first page writeback cleans on: mm/page_writeback.py): a user store went
  through a TLB entry into a file page that neither its folio (PG_dirty) nor any PTE mapping it records as
  dirty: a store through a stale writable entry after writeback cleaned the page. It never reaches the file.

Liveness: an entry on another CPU is live at once (that CPU may be running user code of the mm right
now, or may switch back to it without a flush), unless the arch says it is not (`tlb_entry_live`,
`pwc_entry_live`: e.g. x86 v6.18 lazy CPUs re-check tlb_gen before running the mm again, but their
paging-structure caches stay live for speculative walks). An entry on the freeing CPU itself cannot be
used by the kernel code that is running there. A non-live entry becomes a violation only if its CPU
returns to user code of the mm (or resumes a thread of it) before a flush drops it: the freed frame is
then reachable by user code.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mmugather.mm.page_alloc import ANON, BATCH, DEVICE, FILE, KIND_NAMES, PGTABLE

MAX_RECORDED = 200
LOOKUP_MAX = 4096       # reached(): frames looked up one by one up to this many
FEW_FOUND = 8           # reached(): frames found that a mask of comparisons serves faster than isin


class Invariants:
    """Holds the reverse maps (frame -> number of TLB/PWC entries on all CPUs) and the violation list."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.cpus: list = []
        self.alloc: Any = None         # the PageAlloc and the Arch, set by the Simulation once built
        self.arch: Any = None
        self.tlb_refs: dict[int, int] = {}
        self.pwc_refs: dict[int, int] = {}
        self.walking: dict[int, int] = {}      # PTE-table pfn -> lockless walkers (gup_fast) inside it
        self.files: list = []                  # the AddressSpaces (set by the Simulation): lost-write's rmap
        self.check_stores = False              # lost-write is checked: writeback has cleaned a page
        self.in_flight: list[set] = []        # syscall_enter()'s snapshots of the calls not returned yet
        self.in_flight_keys: frozenset = frozenset()   # their (cpu, vpn) pairs: tlb_filled()'s quick test
        self.violations: list[dict] = []
        self.total = 0
        self._seen: set = set()
        self._holders: list[int] = []          # _freed_while_mapped(): CPU indices, latest holder first

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
            if pfn in self.walking:
                self._freed_while_walked(c, pfn)
        else:
            if kind != BATCH:
                m.pages_freed += 1
            if pfn in self.tlb_refs:
                self._freed_while_mapped(c, pfn)
        if c is not None and c.ptl_held and kind != BATCH:
            m.frees_under_pte_lock += 1

    def on_free_many(self, c, pfns: list[int], kinds: list[int]) -> None:
        """on_free() for frames freed together by release_pages(), and their kinds."""
        m = self.metrics
        tlb_refs, pwc_refs = self.tlb_refs, self.pwc_refs
        if tlb_refs or pwc_refs or self.walking:
            tables = 0
            for pfn, kind in zip(pfns, kinds):
                if kind == PGTABLE:
                    tables += 1
                    if pfn in pwc_refs:
                        self._freed_while_cached(c, pfn)
                    if pfn in self.walking:
                        self._freed_while_walked(c, pfn)
                elif pfn in tlb_refs:
                    self._freed_while_mapped(c, pfn)
        else:                                           # nothing cached or walked: only the counts
            tables = kinds.count(PGTABLE)
        m.page_tables_freed += tables
        m.pages_freed += len(pfns) - tables
        if c is not None and c.ptl_held:
            m.frees_under_pte_lock += len(pfns) - tables

    def reached(self, pfns: np.ndarray) -> np.ndarray | None:
        """Which of the frames `pfns` some TLB, paging-structure cache or lockless walker still reaches: a
        boolean mask, or None when none is. Looks each frame up in the reverse maps when there are at most
        LOOKUP_MAX frames or no more than reverse-map entries, else matches the arrays (numpy isin); the mask
        of a few frames found is their comparisons with the array (isin costs tens of microseconds)."""
        refs = [r for r in (self.tlb_refs, self.pwc_refs, self.walking) if r]
        if not refs:
            return None
        if len(pfns) <= LOOKUP_MAX or len(pfns) <= sum(len(r) for r in refs):
            pl = pfns.tolist()
            found = refs[0].keys() & pl
            for r in refs[1:]:
                found |= r.keys() & pl
            if not found:
                return None
            if len(found) <= FEW_FOUND:
                it = iter(found)
                hit = pfns == next(it)
                for pfn in it:
                    hit |= pfns == pfn
                return hit
            return np.isin(pfns, np.fromiter(found, dtype=np.int64, count=len(found)))
        hit = np.isin(pfns, np.fromiter(set().union(*refs), dtype=np.int64))
        return hit if hit.any() else None

    def on_free_array(self, c, pfns, kinds, under_lock=None, ntables: int | None = None) -> None:
        """on_free_many() for numpy arrays of frames freed together (PageAlloc.release_array): the per-frame
        checks for the frames some TLB, paging-structure cache or walker still reaches, counters at once.
        `under_lock`: per frame, whether it was freed with a PTE lock held (default: c.ptl_held);
        `ntables`: how many are page tables, when the caller knows. `pfns` None: the caller found that
        nothing reaches any of the frames (PageAlloc.release_span)."""
        hit = None if pfns is None else self.reached(pfns)
        if hit is not None:
            if under_lock is not None:
                raise AssertionError("on_free_array: per-frame lock flags for frames still reachable")
            self.on_free_many(c, pfns[hit].tolist(), kinds[hit].tolist())
            pfns, kinds, ntables = pfns[~hit], kinds[~hit], None
        m = self.metrics
        n = len(kinds)
        if ntables is None or (under_lock is not None and ntables):
            tables = kinds == PGTABLE
            ntables = int(np.count_nonzero(tables))
        m.page_tables_freed += ntables
        m.pages_freed += n - ntables
        if under_lock is not None:
            m.frees_under_pte_lock += int(np.count_nonzero(under_lock & ~tables if ntables else under_lock))
        elif c is not None and c.ptl_held:
            m.frees_under_pte_lock += n - ntables

    def on_free_each_array(self, c, pfns, kinds) -> None:
        """on_free() of each of numpy arrays of frames freed one by one (PageAlloc.free_array): the
        per-frame checks for the frames something still reaches, counters at once."""
        hit = self.reached(pfns)
        if hit is not None:
            for pfn, kind in zip(pfns[hit].tolist(), kinds[hit].tolist()):
                self.on_free(c, pfn, kind)
            pfns, kinds = pfns[~hit], kinds[~hit]
        m = self.metrics
        tables = int(np.count_nonzero(kinds == PGTABLE))
        not_batch = len(kinds) - int(np.count_nonzero(kinds == BATCH))
        m.page_tables_freed += tables
        m.pages_freed += not_batch - tables
        if c is not None and c.ptl_held:
            m.frees_under_pte_lock += not_batch

    def _freed_while_mapped(self, c, pfn: int) -> None:
        """Frame pfn, which tlb_refs says some TLB still maps, was freed: each CPU whose TLB maps it, in CPU
        order, reports it, or keeps it dangling where its entry is not live (or is the freeing CPU's). The
        TLBs are searched most recent holder of such a frame first (frames freed together are mostly a few
        CPUs'), until the entries found are as many as tlb_refs counts (Tlb keeps that count exact): no
        other TLB maps the frame."""
        ro, rw = pfn << 1, (pfn << 1) | 1
        left = self.tlb_refs[pfn]
        cpus = self.cpus
        order = self._holders
        if len(order) != len(cpus):
            order[:] = range(len(cpus))
        found = []
        for k, i in enumerate(order):
            vals = cpus[i].tlb.values()
            if ro not in vals and rw not in vals:       # a scan in C first: most TLBs do not map it
                continue
            found.append(i)
            if k:
                order.insert(0, order.pop(k))
            left -= 1 if left == 1 else _entries_of(vals, ro, rw)
            if left <= 0:
                break
        for i in sorted(found):
            self._mapped_at_free(c, cpus[i], pfn)

    def _mapped_at_free(self, c, x, pfn: int) -> None:
        """CPU x's TLB maps freed frame pfn: a violation where that entry is live on another CPU than the
        freeing one (naming the first address x's TLB maps it at), else a dangling frame of x's."""
        if x is c or not self.arch.tlb_entry_live(x):
            x.dangling.add(pfn)
            return
        vpn = next(vpn for vpn, v in x.tlb.items() if v >> 1 == pfn)
        who = f"CPU {c.id}" if c is not None else "set-up"
        self.report("stale-tlb-use-after-free", x.id,
                    f"pfn {pfn} freed by {who} at {c.clock if c else 0} ns while CPU {x.id}'s TLB still "
                    f"maps user address {vpn << 12:#x} to it", key=pfn)

    def _freed_while_cached(self, c, pfn: int) -> None:
        for x in self.cpus:
            keys = [k for k, t in x.pwc.items() if t.pfn == pfn]
            if not keys:
                continue
            if x is c or not self.arch.pwc_entry_live(x):
                x.dangling.add(pfn)
                continue
            self.report("page-table-use-after-free", x.id,
                        f"page table pfn {pfn} (PTEs of {keys[0] << 21:#x}) freed by CPU {c.id if c else '-'} at "
                        f"{c.clock if c else 0} ns while CPU {x.id}'s paging-structure cache still points to it",
                        key=pfn)

    # ---------------------------------------------------------------- lockless walkers
    def walker_enter(self, c, pfn: int) -> None:
        """A lockless walker (gup_fast) on CPU c starts reading PTE table pfn."""
        self.walking[pfn] = self.walking.get(pfn, 0) + 1

    def walker_exit(self, c, pfn: int) -> None:
        n = self.walking[pfn] - 1
        if n:
            self.walking[pfn] = n
        else:
            del self.walking[pfn]

    def walker_read(self, c, pfn: int, still_table: bool) -> None:
        """The walker on CPU c reads an entry of table pfn, which must still be a page table."""
        if not still_table:
            self.report("page-table-use-after-free", c.id,
                        f"gup_fast on CPU {c.id} read PTE table pfn {pfn} at {c.clock} ns after it was freed",
                        key=("read", pfn))

    def _freed_while_walked(self, c, pfn: int) -> None:
        self.report("page-table-use-after-free", c.id if c is not None else -1,
                    f"PTE table pfn {pfn} freed by CPU {c.id if c else '-'} at {c.clock if c else 0} ns while a "
                    f"lockless walker (gup_fast) is reading it", key=("walk", pfn))

    def syscall_enter(self, mm, lo: int, hi: int) -> set:
        """An unmap or protection change of [lo, hi) enters the kernel: the TLB entries (cpu, vpn, value) of
        that range cached now, which must all be gone or still granted when it returns."""
        out: set[tuple[Any, int, int]] = set()
        for x in self.cpus:
            if x.loaded_mm is mm:
                out.update((x.id, vpn, v) for vpn, v in x.tlb.items() if lo <= vpn << 12 < hi)
        self.in_flight.append(out)
        self.in_flight_keys = self.in_flight_keys.union([e[:2] for e in out])
        return out

    def tlb_filled(self, c, vpn: int) -> None:
        """CPU c's walk filled a TLB entry for vpn: an entry of the calls in flight cached there before is
        gone, and the new one (the same value when a file page faulted back in) is not theirs to check."""
        if (c.id, vpn) not in self.in_flight_keys:
            return
        for cached in self.in_flight:
            if cached:
                cached.difference_update([e for e in cached if e[0] == c.id and e[1] == vpn])
        self._index_in_flight()

    def _index_in_flight(self) -> None:
        self.in_flight_keys = frozenset([e[:2] for cached in self.in_flight for e in cached])

    def syscall_return(self, c, mm, lo: int, hi: int, cached: set | None = None) -> None:
        """An unmap or protection change of [lo, hi) returns to user space: no CPU may still hold a usable
        TLB entry in that range, cached before the call (`cached`, from syscall_enter), that the page tables
        no longer grant (a stale writable entry would let writes land in a page the program was told is
        gone: the MADV_DONTNEED race of 99baac21e458). An entry cached during the call, to a page faulted
        in after this call zapped the address, is another call's business (a concurrent zap clearing it
        will flush it before it returns)."""
        if cached is not None:
            self.in_flight = [s for s in self.in_flight if s is not cached]
            self._index_in_flight()
        for x in self.cpus:
            if x.loaded_mm is not mm or not x.tlb or not self.arch.tlb_entry_live(x):
                continue
            for vpn, v in x.tlb.items():
                addr = vpn << 12
                if not lo <= addr < hi or (cached is not None and (x.id, vpn, v) not in cached):
                    continue
                pte = _pte_of(mm, addr)
                if not pte & 1 or pte >> 12 != v >> 1 or (v & 1 and not pte & 2):
                    self.report("stale-tlb-after-return", x.id,
                                f"CPU {c.id}'s call on [{lo:#x}, {hi:#x}) returned at {c.clock} ns while CPU "
                                f"{x.id}'s TLB still maps {addr:#x} to pfn {v >> 1}"
                                f"{' writable' if v & 1 else ''}, which the page tables no longer allow",
                                key=("return", vpn))
                    return

    # ---------------------------------------------------------------- file writeback
    def folio_cleaned(self, mapping, index: int) -> None:
        """Writeback cleared PG_dirty of mapping's page `index` (folio_clear_dirty_for_io()): from now on
        every user store is checked for `lost-write`."""
        self.check_stores = True

    def user_store(self, c, mm, addr: int, pfn: int) -> None:
        """CPU c's user code stores to addr through a TLB entry mapping pfn writable (x86: an entry cached
        dirty, so the store sets no PTE bit). A page-cache page that neither PG_dirty nor a present dirty PTE
        of any mapping of it (its own or another VMA's, found through i_mmap) records as dirty will not be
        written back with this store in it: `lost-write`. A page no longer in a page cache (truncated) is
        not written back anyway."""
        if self.alloc.kind[pfn] != FILE or _maps_dirty(mm, addr, pfn):
            return
        where = next(((f, i) for f in self.files for i, p in f.page_cache.items() if p == pfn), None)
        if where is None:
            return
        mapping, index = where
        if index in mapping.dirty:
            return
        for vma in mapping.i_mmap:
            pages = (vma.end - vma.start) >> 12
            if vma.pgoff <= index < vma.pgoff + pages and _maps_dirty(vma.mm, vma.start + ((index - vma.pgoff) << 12),
                                                                      pfn):
                return
        self.report("lost-write", c.id,
                    f"CPU {c.id} stored to {addr:#x} at {c.clock} ns through a stale writable TLB entry for "
                    f"page {index} of file {mapping.name} (pfn {pfn}), which writeback has cleaned and no PTE "
                    f"maps dirty: the write never reaches the file", key=("store", pfn))

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
                if mm.pte_tables or mm.nr_ptes or mm.pgd.entries or mm.huge_pmds:
                    self.report("leak", -1, f"mm {mm.id} exited with {len(mm.pte_tables)} PTE tables still "
                                            f"hooked (nr_ptes={mm.nr_ptes})")
                continue
            live_anon += mm.rss[1]
            live_file_maps += mm.rss[0]
            live_tables += 1 + _count_tables(mm)
        cached = sum(len(f.page_cache) for f in files)
        drivers = sum(len(f.driver_pfns) for f in files)          # device buffers not revoked
        used = alloc.nr_used
        expected = {ANON: live_anon, PGTABLE: live_tables, FILE: cached + (alloc.zero_pfn >= 0), BATCH: 0,
                    DEVICE: drivers}
        for kind, want in expected.items():
            if used[kind] != want:
                self.report("leak", -1, f"{used[kind]} {KIND_NAMES[kind]} frames in use after teardown, "
                                        f"expected {want}")


def _pte_of(mm, addr: int) -> int:
    """The translation mm's page tables give addr, as a PTE: its PTE, or the 4 KiB piece of the huge PMD
    mapping it (mm/huge_memory.py), or 0."""
    pt = mm.pte_tables.get(addr >> 21)
    if pt is not None:
        return pt.ptes[(addr >> 12) & 511]
    pmd = mm.huge_pmds.get(addr >> 21, 0) if mm.huge_pmds else 0
    return pmd + (((addr >> 12) & 511) << 12) if pmd else 0


def _maps_dirty(mm, addr: int, pfn: int) -> bool:
    """Whether mm's PTE for addr is present, maps pfn and is dirty (_PAGE_DIRTY)."""
    pte = _pte_of(mm, addr)
    return bool(pte & 1 and pte >> 12 == pfn and pte & 0x40)


def _count_tables(mm) -> int:
    n = 0
    for pud in mm.pgd.entries.values():
        n += 1
        for pmd in pud.entries.values():
            n += 1 + len(pmd.entries)
    return n


def _entries_of(vals, ro: int, rw: int) -> int:
    """How many of a TLB's values (a dict view) are ro or rw (a frame, read-only or writable): C-level."""
    held = list(vals)
    return held.count(ro) + held.count(rw)
