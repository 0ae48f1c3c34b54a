"""ABIS (Nadav Amit, "Optimizing the TLB Shootdown Algorithm with Page Access Tracking", USENIX ATC 2017) as a
policy plugin on Linux 6.18 x86: a shootdown goes only to the CPUs that may cache a translation it removes.

The paper (abstract, the part of it read for this model): the kernel "detect[s] cases whereby soon-to-be
invalidated mappings are cached by only one TLB or not cached at all", using hardware page access tracking
(x86 sets a PTE's accessed bit when a walk caches it), and so avoids synchronisation for them.

The model gives the arch exactly what access tracking can tell: per CPU, the pages whose walk filled its
TLB (`fill`) and the PTE tables its walks went through (`fill_pwc`, which is what a paging-structure cache
entry comes from) since it last dropped everything (`flush_all`: a CR3 load or full flush), told by the
TLB's observer seam (machine/tlb.py Tlb.watch; the explorer's footprint watches beside it).
native_flush_tlb_multi() then IPIs only the CPUs of its target list whose records meet the flushed range
(any record, for a full flush; the tables too, when page tables were freed). This is the ideal of what
ABIS infers from shared accessed bits: its savings are an upper bound on the paper's, and the cost of
keeping the bits (the paper's "overheads of up to 9%") is not modelled. Everything else is 6.18's.

    mmugather compare --policies 6.18,examples/plugins/abis.py:Abis
    mmugather explore examples/munmap-race.toml --policy examples/plugins/abis.py:Abis --budget 300

The invariant it relies on: a translation can be cached only by a CPU whose walk filled it after the PTE was
last written, and the PTE is cleared before the flush that consults the records, so no later walk can cache
it again; a CPU skipped is one whose TLB and walk cache hold nothing in the range.
"""
from mmugather.arch.x86 import TLB_FLUSH_ALL, X86
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SHIFT
from mmugather.policies import Linux618


class AbisX86(X86):
    """x86-64 v6.18 whose shootdowns skip the CPUs that access tracking shows cache nothing of the range."""

    name = "x86"

    def __init__(self, machine) -> None:
        super().__init__(machine)
        self.engine = machine.engine
        self.tlb.watch(self)
        self.abis_ipis_avoided = 0

    # ------------------------------------------------------------ access tracking (TlbObserver)
    def tlb_op(self, name: str, c, args: tuple) -> None:
        """The TLB's observer. `fill` (vpn, pte): the walk that caches vpn on c sets the PTE's accessed bit,
        so c may cache it; `fill_pwc` (key, table): c's walk goes through the PTE table of key (addr >>
        PMD_SHIFT), the PDE's accessed bit; `flush_all`: c drops its whole TLB and walk cache, so it caches
        nothing it was tracked for. Other operations only drop entries: the records stay a superset."""
        if name == "fill":
            c.per_cpu.setdefault("abis_pages", set()).add(args[0])
        elif name == "fill_pwc":
            c.per_cpu.setdefault("abis_tables", set()).add(args[0])
        elif name == "flush_all":
            c.per_cpu.pop("abis_pages", None)
            c.per_cpu.pop("abis_tables", None)

    # ------------------------------------------------------------ flushes
    def flush_tlb_mm_range(self, c, mm, start: int, end: int, stride_shift: int, freed_tables: bool):
        """flush_tlb_mm_range() as 6.18, remembering the range asked for (before a range longer than
        tlb_single_page_flush_ceiling becomes a full flush): the access records are checked against it."""
        asked = c.per_cpu.setdefault("abis_range", {})
        asked[c.curr.tid] = (start, end)
        yield super().flush_tlb_mm_range(c, mm, start, end, stride_shift, freed_tables)
        del asked[c.curr.tid]

    def may_cache(self, t, start: int, end: int, freed_tables: bool) -> bool:
        """Do t's access records meet [start, end) (its pages; its tables when tables were freed)?"""
        pages = t.per_cpu.get("abis_pages", ())
        tables = t.per_cpu.get("abis_tables", ()) if freed_tables else ()
        if end == TLB_FLUSH_ALL:
            return bool(pages) or bool(tables)
        lo, hi = start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        if any(lo <= v <= hi for v in pages):
            return True
        lo, hi = start >> PMD_SHIFT, (end - 1) >> PMD_SHIFT
        return any(lo <= k <= hi for k in tables)

    def native_flush_tlb_multi(self, c, cpumask: list[int], info):
        """native_flush_tlb_multi() on the CPUs of cpumask less the other CPUs whose access records show
        they cache nothing of the range asked for: those get no IPI (and keep their tlb_gen, so their next
        flush is a full one). The initiator is 6.18's to decide."""
        initiator = self.cpus[info.initiating_cpu]
        start, end = initiator.per_cpu["abis_range"][initiator.curr.tid]
        kept = [cpu for cpu in cpumask if cpu == c.id or self.may_cache(self.cpus[cpu], start, end, info.freed_tables)]
        for cpu in cpumask:
            if cpu not in kept and (info.freed_tables or self.should_flush_tlb(self.cpus[cpu], info)):
                self.abis_ipis_avoided += 1
                self.engine.note(c, "ipi_avoided", {"cpu": cpu, "start": hex(start), "end": hex(end)})
        yield super().native_flush_tlb_multi(c, kept, info)


class Abis(Linux618):
    """Linux 6.18 with ABIS's access-tracked shootdown targets (x86 only)."""

    name = "6.18+abis"
    arches = {"x86": AbisX86}
