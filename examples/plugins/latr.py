"""LATR (Kumar, Maass, Kashyap, Veselý, Yan, Kim, Bhattacharjee, Krishna, "LATR: Lazy Translation Coherence",
ASPLOS 2018) as a policy plugin on Linux 6.18 x86: munmap's shootdowns become per-CPU states that each CPU
handles at its next scheduler tick or context switch, and the memory unmapped is reused only after every CPU
named in those states has done so.

Followed from the authors' kernel (github.com/sslab-gatech/latr, Linux 4.10, arch/x86/mm/tlb.c):
- native_flush_tlb_others(): while `mm->munmap_inprogress`, flush the local TLB and
  native_flush_save_state(): the range and the target cpumask go into a free slot of this CPU's ring of
  LAZY_TLB_NUM_ENTRIES states; no IPI. A full ring falls back to smp_call_function_many().
- native_flush_saved_states(cpu): every CPU's ring is scanned; for each valid state naming this CPU,
  flush_tlb_func() runs locally and the CPU clears its bit; the state is invalid once no bit is left.
- CONFIG_LAZY_MEM_FREE: the pages and VMAs unmapped go to per-mm lazy lists that a kthread frees later.
Modelled differently, and why:
- The authors' kthread frees lazy pages and VMAs 2*HZ jiffies after the munmap ("1 extra buffer"), a time
  bound that holds when every CPU ticks; the model frees them when every state saved before them is done
  (the condition that time bound stands for, and which the brief and the paper's abstract state). Page
  tables freed by that munmap wait for the same states, then go to RCU as in 6.18 (what the authors'
  4.10 kernel did with them was not read: x86 4.10 had no RCU table freeing).
- The 1-second kthread (background_tlb_invalidate) that falls back to IPIs for states still pending after
  TLB_SHOOTDOWN_MAX (2) rounds exists for CPUs that neither tick nor switch: idle ones (NO_HZ_IDLE). The
  model has no such kthread (its runs are shorter than a second), so an idle target gets its IPI at once
  instead of a second or two later; so does every target when the ring is full (native_flush_tlb_others).
- LAZY_TLB_NUM_ENTRIES is defined in a header that was not read: 64 here.
- The lazy states are those of 6.18's target list (lazy CPUs only when page tables are freed), not the whole
  mm_cpumask that 4.10 passed; the scan runs on each tick (Engine.on_tick, HZ=250) and at each context
  switch (switch_mm / enter_lazy_tlb). The explorer has no ticks (time orders nothing): there a CPU passes
  only at context switches, a subset of the schedules the free-running machine has.

    mmugather compare --policies 6.18,examples/plugins/latr.py:Latr
    mmugather explore examples/munmap-race.toml --policy examples/plugins/latr.py:Latr --budget 300
    mmugather explore ... --without-fix latr_lazy_free     # LATR without its reuse delay

Invariant it relies on: no frame, page table or virtual range unmapped by a lazy munmap is reused before
every CPU that may cache it has invalidated (invariant #1 with the flush made lazy). It gives up another:
munmap returns while other CPUs may still use translations to the range (`stale-tlb-after-return`).
"""
from __future__ import annotations

from array import array

from mmugather.arch.x86 import X86
from mmugather.kernel.locking import LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE
from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.machine.cpu import IDLE
from mmugather.mm.mm_types import Vma
from mmugather.policies import Linux618


class LatrState:
    """lazytlb_shootdown_t: one saved shootdown (mm, range, stride) and the CPUs yet to handle it."""

    __slots__ = ("mm", "start", "end", "stride_shift", "freed_tables", "new_tlb_gen", "cpus")

    def __init__(self, info, cpus: list[int]) -> None:
        self.mm = info.mm
        self.start, self.end, self.stride_shift = info.start, info.end, info.stride_shift
        self.freed_tables, self.new_tlb_gen = info.freed_tables, info.new_tlb_gen
        self.cpus = set(cpus)


class LazyFree:
    """An entry of the mm's lazy lists: pages, RCU table frees and a virtual range waiting for `waits`."""

    __slots__ = ("waits", "pages", "rcu", "range")

    def __init__(self, waits: list, pages=(), rcu=(), vrange=None) -> None:
        self.waits, self.pages, self.rcu, self.range = waits, list(pages), list(rcu), vrange


class LatrX86(X86):
    """x86-64 v6.18 with LATR's lazy shootdown for munmap (arch/x86/mm/tlb.c of sslab-gatech/latr)."""

    name = "x86"
    LAZY_TLB_NUM_ENTRIES = 64

    def __init__(self, machine) -> None:
        super().__init__(machine)
        self.engine = machine.engine
        self.engine.on_tick(self.native_flush_saved_states)
        self.reclaim = None                     # set by the policy: called when a state of an mm is done
        self.lazy_saved = self.lazy_invalidations = self.fallback_ipis = 0

    def native_flush_tlb_multi(self, c, cpumask: list[int], info):
        """native_flush_tlb_multi() with LATR's native_flush_tlb_others(): outside munmap as 6.18; during
        one, the CPUs 6.18 picks are flushed locally (the initiator) or get a saved state instead of an IPI
        (IPIs to idle targets, and to all when the ring is full)."""
        if not info.mm.__dict__.get("munmap_inprogress"):
            yield super().native_flush_tlb_multi(c, cpumask, info)
            return
        local, targets = self.flush_tlb_multi_cpus(c, cpumask, info)
        if local:
            yield LOCAL_IRQ_DISABLE
            yield self.flush_tlb_func(c, info)
            yield LOCAL_IRQ_ENABLE
        idle = [cpu for cpu in targets if self.cpus[cpu].state == IDLE]
        lazy = [cpu for cpu in targets if cpu not in idle]
        if lazy and not self.native_flush_save_state(c, info, lazy):
            idle = targets                                       # ring full: IPIs, as LATR falls back
        if idle:
            self.fallback_ipis += len(idle)
            yield SmpCallFunctionMany(idle, self._flush_tlb_func_ipi(info))

    def native_flush_save_state(self, c, info, targets: list[int]) -> bool:
        """native_flush_save_state(): put the shootdown in a free slot of this CPU's ring; False if full."""
        ring = c.per_cpu.setdefault("latr_states", [])
        if len(ring) >= self.LAZY_TLB_NUM_ENTRIES:
            return False
        state = LatrState(info, targets)
        ring.append(state)
        info.mm.__dict__.setdefault("latr_states", []).append(state)
        self.lazy_saved += 1
        self.engine.note(c, "lazy_shootdown", {"mm": info.mm.id, "start": hex(info.start), "end": hex(info.end),
                                               "cpus": targets})
        return True

    def native_flush_saved_states(self, t) -> None:
        """native_flush_saved_states(): on CPU t, run flush_tlb_func() locally for every saved state of
        every CPU that names t, and clear t's bit; a state with no bit left is done (its mm's lazy memory
        may be reclaimed)."""
        for x in self.cpus:
            ring = x.per_cpu.get("latr_states")
            if not ring:
                continue
            for state in [s for s in ring if t.id in s.cpus]:
                self.flush_tlb_func(t, state)
                self.lazy_invalidations += 1
                self.engine.note(t, "lazy_invalidation", {"mm": state.mm.id, "start": hex(state.start),
                                                          "end": hex(state.end), "saved_by_cpu": x.id})
                state.cpus.discard(t.id)
                if not state.cpus:
                    ring.remove(state)
                    state.mm.latr_states.remove(state)
                    if self.reclaim is not None:
                        self.reclaim(t, state.mm)

    def switch_mm(self, c, next_mm) -> None:
        """A context switch to a user task: handle the saved states, then switch_mm_irqs_off()."""
        self.native_flush_saved_states(c)
        super().switch_mm(c, next_mm)

    def enter_lazy_tlb(self, c) -> None:
        """A context switch to idle or a kernel thread: enter_lazy_tlb(), then handle the saved states."""
        super().enter_lazy_tlb(c)
        self.native_flush_saved_states(c)


class Latr(Linux618):
    """Linux 6.18 with LATR's lazy munmap shootdowns and lazy memory reclaim (x86 only)."""

    name = "6.18+latr"
    arches = {"x86": LatrX86}
    fixes = {**Linux618.fixes,
             "latr_lazy_free": ("LATR, ASPLOS 2018 (CONFIG_LAZY_MEM_FREE)",
                                "pages, page tables and virtual ranges unmapped lazily wait for every CPU to "
                                "handle the shootdown; --without-fix latr_lazy_free frees them at once")}

    def __init__(self, machine) -> None:
        super().__init__(machine)
        self.arch.reclaim = self.process_lazy_mm

    # ------------------------------------------------------------ munmap
    def do_vmi_align_munmap(self, c, mm, start: int, end: int, unlock: bool):
        """do_vmi_align_munmap() with mm->munmap_inprogress raised around it; the range joins the mm's
        lazy VMA list while shootdowns of it are pending."""
        mm.munmap_inprogress = mm.__dict__.get("munmap_inprogress", 0) + 1
        released = yield super().do_vmi_align_munmap(c, mm, start, end, unlock)
        mm.munmap_inprogress -= 1
        self._lazy_defer(mm, vrange=(start, end))
        return released

    def get_unmapped_area(self, mm, length: int, anon: bool = False) -> int:
        """get_unmapped_area(), skipping ranges on the mm's lazy VMA list (lazy_mmap)."""
        held = [Vma(mm, *e.range, 0) for e in mm.__dict__.get("latr_lazy", ()) if e.range is not None
                and not any(v.start < e.range[1] and e.range[0] < v.end for v in mm.vmas)]
        for v in held:
            mm.insert_vma(v)
        try:
            return super().get_unmapped_area(mm, length, anon)
        finally:
            for v in held:
                mm.vmas.remove(v)

    # ------------------------------------------------------------ lazy memory
    def _lazy_defer(self, mm, pages=(), rcu=(), vrange=None) -> bool:
        """Put pages / RCU table frees / a virtual range on mm's lazy lists if a saved shootdown of mm is
        pending (False: nothing pending, or the reuse delay is switched off: free now)."""
        waits = [s for s in mm.__dict__.get("latr_states", ()) if s.cpus]
        if not waits or "latr_lazy_free" in self.without:
            return False
        mm.__dict__.setdefault("latr_lazy", []).append(LazyFree(waits, pages, rcu, vrange))
        return True

    def process_lazy_mm(self, c, mm) -> None:
        """__process_lazy_mm(): free the lazy entries of mm whose shootdowns every CPU has handled."""
        lazy = mm.__dict__.get("latr_lazy")
        if not lazy:
            return
        for e in [e for e in lazy if not any(s.cpus for s in e.waits)]:
            lazy.remove(e)
            if e.pages:
                self.alloc.release_pages(c, e.pages)          # lazy_free_pages()
            for func in e.rcu:
                self.engine.rcu.call_rcu(c, func)

    def tlb_batch_pages_flush(self, c, tlb):
        """tlb_batch_pages_flush(): the pages go to the mm's lazy page list while its saved shootdowns are
        pending, else are freed as in 6.18."""
        pfns = []
        batch = tlb.local
        while batch is not None and batch.pages:
            pfns.extend(p for p in batch.pages if p >= 0)
            batch = batch.next
        if not pfns or not self._lazy_defer(tlb.mm, pages=pfns):
            yield super().tlb_batch_pages_flush(c, tlb)
            return
        batch = tlb.local
        while batch is not None and batch.pages:
            batch.pages = array("q")
            batch = batch.next
        tlb.active = tlb.local

    def tlb_table_flush(self, c, tlb):
        """tlb_table_flush(): invalidate, then the table batch waits for the pending saved shootdowns
        before it goes to call_rcu()."""
        batch = tlb.batch
        if batch is None:
            return
        yield self.tlb_table_invalidate(c, tlb)
        tlb.batch = None
        func = self._tlb_remove_table_rcu(batch)
        if not self._lazy_defer(tlb.mm, rcu=[func]):
            self.engine.rcu.call_rcu(c, func)

    def tlb_remove_table_one(self, c, pfn: int) -> None:
        """tlb_remove_table_one() (no table batch page): as tlb_table_flush(), for one table."""
        def tlb_remove_table_one_rcu(cpu, pfn=pfn) -> None:
            self.alloc.free_page(cpu, pfn)
        mm = c.curr.mm if c.curr is not None else None
        if mm is None or not self._lazy_defer(mm, rcu=[tlb_remove_table_one_rcu]):
            self.engine.rcu.call_rcu(c, tlb_remove_table_one_rcu)
