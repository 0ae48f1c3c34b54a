"""The simulated TLB and paging-structure cache of one CPU, and the hardware page walk that fills them.

x86 without PCID: a CPU caches translations of the mm its CR3 points to (`Cpu.loaded_mm`) only; loading
CR3 drops them all. Every fill and drop is reported to the invariant checker, which keeps per-frame
reference counts so that freeing a frame checks in O(1) whether some CPU still maps it. Observers are told
of every operation before it happens (the explorer counts and logs them; a design may track fills the way
hardware access bits would): one is called directly, several through a `TlbObservers` fan-out, none costs
one test per operation.

A translation through a huge PMD (a 2 MiB page) is one TLB entry in hardware: an invalidation of any address
inside it drops it whole. The model keeps the 4 KiB translations such an entry provides, one per address
used (so every frame's reference count stays exact), and remembers which ones came from the same huge
PMD on the same CPU (`Tlb.huge`): flush_one()/flush_leaf() of any address in that 2 MiB drop them all.
"""
from __future__ import annotations

from typing import Protocol

# The x86-64 page-table format the hardware walks (arch/x86/include/asm/pgtable_types.h): the same values
# as mm/pgtable.py, defined here because the hardware sits below the kernel's mm/.
PAGE_SHIFT = 12
PMD_SHIFT = 21
_PAGE_RW = 0x002

TLB_ENTRIES = 1536      # second-level TLB of a Skylake core
PWC_ENTRIES = 32        # paging-structure cache entries for PDEs (pointers to PTE tables)
COMPACT_EVERY = 256     # evictions from a CPU's TLB between two compactions of its dict (host time only)


class TlbObserver(Protocol):
    """Told of each TLB operation `name` (a Tlb method) on CPU c with its other arguments, before it runs."""

    def tlb_op(self, name: str, c, args: tuple) -> None: ...


class TlbObservers:
    """Several TLB observers, told in the order they watch."""

    def __init__(self, observers: list[TlbObserver]) -> None:
        self.all = observers

    def tlb_op(self, name: str, c, args: tuple) -> None:
        for o in self.all:
            o.tlb_op(name, c, args)


class Tlb:
    """Fills and invalidations for all CPUs, keeping `inv.tlb_refs` / `inv.pwc_refs` exact."""

    def __init__(self, invariants, observer: TlbObserver | None = None) -> None:
        self.inv = invariants
        self.huge: dict[tuple[int, int], set[int]] = {}   # (cpu, addr >> PMD_SHIFT) -> vpns filled from a huge PMD
        self.evictions: dict[int, int] = {}   # per CPU id: evictions from its TLB since its dict was compacted
        self.observers: list[TlbObserver] = []
        self.observer: TlbObserver | None = None
        if observer is not None:
            self.watch(observer)

    def watch(self, observer: TlbObserver) -> None:
        """Add an observer of every operation from now on (the simulation's, then an arch's)."""
        if not callable(getattr(observer, "tlb_op", None)):
            raise TypeError(f"Tlb.watch: {observer!r} has no tlb_op(name, c, args)")
        self.observers.append(observer)
        self.observer = observer if len(self.observers) == 1 else TlbObservers(self.observers)

    def fill(self, c, vpn: int, pte: int) -> None:
        """A walk found a present PTE: cache pfn*2 + writable for vpn, evicting the oldest entry if full."""
        if self.observer is not None:
            self.observer.tlb_op("fill", c, (vpn, pte))
        tlb = c.tlb
        refs = self.inv.tlb_refs
        if self.huge:
            group = self.huge.get((c.id, vpn >> 9))
            if group is not None:
                group.discard(vpn)                  # now a 4 KiB translation of its own
        old = tlb.pop(vpn, None)
        if old is not None:
            self._unref(c, refs, old >> 1)
        elif len(tlb) >= TLB_ENTRIES:
            victim = next(iter(tlb))
            self._unref(c, refs, tlb.pop(victim) >> 1)
            self._evicted(c, tlb)
        pfn = pte >> PAGE_SHIFT
        tlb[vpn] = (pfn << 1) | (1 if pte & _PAGE_RW else 0)
        refs[pfn] = refs.get(pfn, 0) + 1

    def fill_huge(self, c, vpn: int, pmd: int) -> None:
        """A walk found a present huge PMD: cache the 4 KiB translation of vpn it gives (frame pmd's +
        vpn's offset in the 2 MiB; writable as the PMD) as part of one 2 MiB TLB entry."""
        self.fill(c, vpn, pmd + ((vpn & 511) << PAGE_SHIFT))
        self.huge.setdefault((c.id, vpn >> 9), set()).add(vpn)

    def _drop_huge(self, c, key: int) -> None:
        """Drop the 2 MiB entry of CPU c that covers addr >> PMD_SHIFT == key, if it holds one."""
        group = self.huge.pop((c.id, key), None)
        if group:
            refs = self.inv.tlb_refs
            for vpn in group:
                v = c.tlb.pop(vpn, None)
                if v is not None:
                    self._unref(c, refs, v >> 1)

    def _forget_huge(self, c) -> None:
        """c's TLB was emptied: no 2 MiB entry is left on it."""
        for key in [k for k in self.huge if k[0] == c.id]:
            del self.huge[key]

    def fill_pwc(self, c, key: int, table) -> None:
        if self.observer is not None:
            self.observer.tlb_op("fill_pwc", c, (key, table))
        pwc = c.pwc
        refs = self.inv.pwc_refs
        old = pwc.pop(key, None)
        if old is not None:
            self._unref(c, refs, old.pfn)
        elif len(pwc) >= PWC_ENTRIES:
            victim = next(iter(pwc))
            self._unref(c, refs, pwc.pop(victim).pfn)
        pwc[key] = table
        refs[table.pfn] = refs.get(table.pfn, 0) + 1

    def walk_fill(self, c, key: int, table, vpn: int, pte: int) -> None:
        """A walk's fills: fill_pwc(c, key, table) when `table` is not None (the walk went through the page
        tables, not the PWC), then fill(c, vpn, pte). With no observer and no 2 MiB entry anywhere, their
        effects in one call, _unref() and _evicted() inlined (the lookahead's hot path); else the two calls."""
        if self.observer is not None or self.huge:
            if table is not None:
                self.fill_pwc(c, key, table)
            self.fill(c, vpn, pte)
            return
        inv = self.inv
        drops = []                                  # (refs, pfn) of the entries replaced or evicted
        if table is not None:                       # fill_pwc()
            pwc = c.pwc
            old = pwc.pop(key, None)
            if old is None and len(pwc) >= PWC_ENTRIES:
                old = pwc.pop(next(iter(pwc)))
            if old is not None:
                drops.append((inv.pwc_refs, old.pfn))
        tlb = c.tlb                                 # fill()
        v = tlb.pop(vpn, None)
        if v is None and len(tlb) >= TLB_ENTRIES:
            v = tlb.pop(next(iter(tlb)))
            evictions = self.evictions              # (_evicted(), inlined)
            n = evictions.get(c.id, 0) + 1
            if n >= COMPACT_EVERY:
                kept = dict(tlb)
                tlb.clear()
                tlb.update(kept)
                n = 0
            evictions[c.id] = n
        if v is not None:
            drops.append((inv.tlb_refs, v >> 1))
        if drops:
            dangling = c.dangling
            for refs, pfn in drops:                 # (_unref(), inlined: each dict's drop before its add)
                n = refs[pfn] - 1
                if n:
                    refs[pfn] = n
                else:
                    del refs[pfn]
                if dangling:
                    dangling.discard(pfn)
        if table is not None:
            pwc[key] = table
            refs = inv.pwc_refs
            pfn = table.pfn
            refs[pfn] = refs.get(pfn, 0) + 1
        pfn = pte >> PAGE_SHIFT
        tlb[vpn] = (pfn << 1) | (1 if pte & _PAGE_RW else 0)
        refs = inv.tlb_refs
        refs[pfn] = refs.get(pfn, 0) + 1

    def _evicted(self, c, tlb: dict) -> None:
        """CPU c's TLB evicted its oldest entry. Host time only: a dict used first-in first-out keeps the
        slots of the keys popped from its front until it resizes, and next(iter()) walks over all of them
        (microseconds per eviction once a thousand have gone); every COMPACT_EVERY evictions the dict is
        rebuilt in place (the same entries in the same order, the same object)."""
        n = self.evictions.get(c.id, 0) + 1
        if n >= COMPACT_EVERY:
            kept = dict(tlb)
            tlb.clear()
            tlb.update(kept)
            n = 0
        self.evictions[c.id] = n

    def _unref(self, c, refs: dict, pfn: int) -> None:
        n = refs[pfn] - 1
        if n:
            refs[pfn] = n
        else:
            del refs[pfn]
        if c.dangling:
            c.dangling.discard(pfn)

    def flush_all(self, c) -> int:
        """local_flush_tlb() / load_cr3(): drop every translation and cached PDE. Returns the entries dropped."""
        if self.observer is not None:
            self.observer.tlb_op("flush_all", c, ())
        refs = self.inv.tlb_refs
        n = len(c.tlb)
        for v in c.tlb.values():
            pfn = v >> 1
            r = refs[pfn] - 1
            if r:
                refs[pfn] = r
            else:
                del refs[pfn]
        c.tlb.clear()
        prefs = self.inv.pwc_refs
        for t in c.pwc.values():
            r = prefs[t.pfn] - 1
            if r:
                prefs[t.pfn] = r
            else:
                del prefs[t.pfn]
        c.pwc.clear()
        c.dangling.clear()
        if self.huge:
            self._forget_huge(c)
        return n

    def flush_one(self, c, addr: int) -> None:
        """__flush_tlb_one() / INVLPG: drop one translation and, as on x86, every cached PDE."""
        if self.observer is not None:
            self.observer.tlb_op("flush_one", c, (addr,))
        self._drop_leaf(c, addr)
        for key in list(c.pwc):
            self._unref(c, self.inv.pwc_refs, c.pwc.pop(key).pfn)

    def flush_translations(self, c) -> None:
        """Drop every translation but keep the cached walks: powerpc radix tlbie of a PID, RIC_FLUSH_TLB."""
        refs = self.inv.tlb_refs
        for v in c.tlb.values():
            self._unref(c, refs, v >> 1)
        c.tlb.clear()
        if self.huge:
            self._forget_huge(c)

    def flush_pwc(self, c) -> None:
        """Drop every cached walk, keep the translations: powerpc radix tlbie of a PID, RIC_FLUSH_PWC."""
        refs = self.inv.pwc_refs
        for t in c.pwc.values():
            self._unref(c, refs, t.pfn)
        c.pwc.clear()

    def flush_leaf(self, c, addr: int) -> None:
        """arm64 TLBI VALE1IS: drop the last-level entry for addr only; cached walks stay."""
        if self.observer is not None:
            self.observer.tlb_op("flush_leaf", c, (addr,))
        self._drop_leaf(c, addr)

    def _drop_leaf(self, c, addr: int) -> None:
        """Drop c's translation of addr (with its whole 2 MiB entry, if a huge PMD filled it)."""
        v = c.tlb.pop(addr >> PAGE_SHIFT, None)
        if v is not None:
            self._unref(c, self.inv.tlb_refs, v >> 1)
        if self.huge:
            self._drop_huge(c, addr >> PMD_SHIFT)

    def flush_walks(self, c, start: int, end: int) -> None:
        """Drop the cached walks (PWC entries) covering [start, end): arm64 TLBI VAE1IS of that range."""
        if self.observer is not None:
            self.observer.tlb_op("flush_walks", c, (start, end))
        lo, hi = start >> PMD_SHIFT, (end - 1) >> PMD_SHIFT
        for key in [k for k in c.pwc if lo <= k <= hi]:
            self._unref(c, self.inv.pwc_refs, c.pwc.pop(key).pfn)

    def walk(self, c, mm, addr: int):
        """The hardware page walk for a user access: the PTE table (through the PWC when it has the PDE,
        even if that table was unhooked since), or None when no PTE table maps addr."""
        if self.observer is not None:
            self.observer.tlb_op("walk", c, (mm, addr))
        key = addr >> PMD_SHIFT
        table = c.pwc.get(key)
        if table is None:
            table = mm.pte_tables.get(key)
            if table is None:
                return None
            self.fill_pwc(c, key, table)
        return table
