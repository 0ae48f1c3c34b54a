"""What of a controlled machine's state more than one CPU can reach, as cheap signatures compared before and
after each step: the explorer's evidence that a step wrote shared memory (explore/controlled.py).

Signatures, each a tuple compared with the one taken before the step:
- `mem()`: the kernel's shared memory: every mm (page tables and their entries, VMAs, its fields), the
  page cache of every file, the allocator's frames, RCU's callbacks and quiescent-state counts. Lock
  state is not in it: lock requests are the only writers of a lock and leave their own footprint bits
  (explore/controlled.py);
- `inv()`: the invariant checker's records of calls in flight, lockless walkers and violations;
- `proc()`: what the user programs share: each process's flags and named ranges;
- `cpu(x)`: what kernel code on other CPUs reads of CPU x: its current task, the mm its CR3 and
  cpu_tlbstate point to, its lazy state, its per-CPU values (a design's queues among them) and the frames
  freed under its TLB;
- `sched(x)`: what other CPUs change of CPU x's scheduling (waking a task onto its runqueue, handing it a
  lock, acknowledging its IPI): its state and runqueue.

A step that leaves `mem()` as it found it wrote no kernel memory (whatever it read); a write that stores
the value already there is no write here, which is sound for the explorer's use: a step that reads shared
memory is dependent on every step that changes it, so a value-preserving store only ever meets steps that
change nothing it could see. Clocks are left out (time orders nothing under the explorer), as are the
objects the state fingerprint (explore/state.py) takes as stateless: the kernel, arch and policy objects.
Known types are encoded by hand (the cost of every explored step); anything else as the fingerprint
encodes it. tests/test_explore_footprint.py checks the hand-made encodings against the fingerprint's.
"""
from __future__ import annotations

from typing import Any

from mmugather.explore.state import simulation_fingerprinter
from mmugather.kernel.locking import Mutex, RwSemaphore, Spinlock
from mmugather.mm.mm_types import AddressSpace, MmStruct, Vma
from mmugather.mm.pgtable import DirTable, PteTable

_ATOMS = (int, str, bool, float, type(None), bytes)
_MM_FIELDS = MmStruct(0, 0).__dict__.keys()     # the fields _mm() and _file() encode one by one
_FILE_FIELDS = AddressSpace("").__dict__.keys()


class SharedState:
    """Signatures of the shared state of `sim`, a Simulation built for the explorer."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.cpus = sim.engine.cpus
        self.tasks = sim.engine.tasks
        self.fingerprinter = simulation_fingerprinter(sim)
        self._enc: dict[type, Any] = {MmStruct: self._mm, Vma: _vma, AddressSpace: self._file,
                                      PteTable: _pte_table, DirTable: self._dir, Spinlock: _lock,
                                      RwSemaphore: _lock, Mutex: _lock, list: self._seq, tuple: self._seq,
                                      set: frozenset, frozenset: frozenset, dict: self._dict}

    def mem(self) -> tuple:
        """The kernel's shared memory: mms, page caches, the allocator's frames, RCU."""
        sim = self.sim
        alloc, rcu = sim.alloc, sim.rcu
        free = alloc.free_list
        return ((tuple([self._mm(mm) for mm in sim.mms]), tuple([self._file(f) for f in sim.files.values()]),
                     alloc.refcount.tobytes(), alloc.mapcount.tobytes(), alloc.kind.tobytes(),
                     free.a.tobytes(), free.n, tuple(alloc.nr_used), alloc.zero_pfn,
                     tuple([(tuple(need.items()), id(f), id(x)) for need, f, x in rcu.pending]),
                     tuple(rcu.qs), sim.engine.halted))

    def inv(self) -> tuple:
        """The invariant checker's records: calls in flight, lockless walkers, stores checked, violations."""
        inv = self.sim.invariants
        return ((len(inv.violations), len(inv.in_flight), inv.in_flight_keys,
                     tuple([len(s) for s in inv.in_flight]), tuple(inv.walking.items()), inv.check_stores))

    def proc(self) -> tuple:
        """What the programs of the processes share: each process's flags, mm and named ranges."""
        return ((tuple([(id(p.mm), p.exiting, p.busy, tuple(p.ranges.items()), len(p.threads))
                       for p in self.sim.processes]),
                     self.sim.engine.halted))

    def regions(self) -> tuple[tuple, tuple, tuple]:
        return self.mem(), self.inv(), self.proc()

    def cpu(self, x) -> tuple:
        """What kernel code on other CPUs reads of CPU x (x: a Cpu): its current task, the mm its CR3 and
        cpu_tlbstate point to, its lazy state, its plain per-CPU values, the frames freed under its TLB."""
        curr = x.curr
        return (id(curr), (id(curr.mm), curr.alive) if curr is not None else None, id(x.loaded_mm),
                id(x.active_mm), x.tlbstate, frozenset(x.dangling), self._dict(x.per_cpu))

    def sched(self, x) -> tuple:
        """What decides which of CPU x's actors can step (other CPUs change it by waking a task there,
        handing it a lock or acknowledging its IPI): its state, its runqueue and their tasks' state."""
        return (x.state, x.ipi_acks_left, tuple([(id(t), t.alive, id(t.blocked_on)) for t in x.runqueue]))

    def cpus_sig(self) -> tuple[tuple, ...]:
        return tuple([(self.cpu(x), self.sched(x)) for x in self.cpus])

    # ------------------------------------------------------------------ encoders
    def enc(self, x) -> Any:
        cls = x.__class__
        if cls in _ATOMS:
            return x
        h = self._enc.get(cls)
        if h is None:                     # (a plugin's state, 2.6.39's per-CPU gather): as fingerprints see it
            return self.fingerprinter.encode(x)
        return h(x)

    def _seq(self, x) -> tuple:
        enc = self.enc
        return tuple([v if v.__class__ in _ATOMS else enc(v) for v in x])

    def _dict(self, x) -> tuple:
        enc = self.enc
        return tuple([(k, v if v.__class__ in _ATOMS else enc(v)) for k, v in x.items()])

    def _dir(self, t: DirTable) -> tuple:
        return (t.pfn, tuple([(k, _pte_table(v) if v.__class__ is PteTable else self._dir(v))
                              for k, v in t.entries.items()]))

    def _mm(self, mm: MmStruct) -> tuple:
        d = mm.__dict__
        if d.keys() != _MM_FIELDS:
            return self._mm_any(mm)
        rss = mm.rss
        return (rss[0], rss[1], frozenset(mm.cpumask), mm.users, mm.nr_ptes, mm.exited, mm.tlb_gen,
                mm.tlb_flush_pending, mm.global_asid, mm.asid_transition, mm.zero_ptes,
                _notifiers(mm.notifiers), tuple([_vma(a) for a in mm.vmas]), self._dir(mm.pgd),
                tuple([(key, id(t)) for key, t in mm.pte_tables.items()]))

    def _mm_any(self, mm: MmStruct) -> tuple:
        """An mm with fields beyond MmStruct's own (set by an arch or a plugin): every field."""
        out: list = []
        enc = self.enc
        for k, v in mm.__dict__.items():
            if k == "vmas":
                out.append(tuple([_vma(a) for a in v]))
            elif k == "pte_tables":
                out.append(tuple([(key, id(t)) for key, t in v.items()]))   # the tables: under pgd
            elif k == "notifiers":
                out.append(_notifiers(v))
            else:
                out.append(v if v.__class__ in _ATOMS else enc(v))
        return tuple(out)

    def _file(self, f: AddressSpace) -> tuple:
        d = f.__dict__
        if d.keys() != _FILE_FIELDS:
            return self._file_any(f)
        return (tuple(f.page_cache.items()), frozenset(f.dirty), tuple(f.driver_pfns.items()),
                tuple([id(a) for a in f.i_mmap]), f.truncate_count, len(f.folio_locks))

    def _file_any(self, f: AddressSpace) -> tuple:
        """A file with fields beyond AddressSpace's own: every field."""
        enc = self.enc
        return tuple([tuple([id(a) for a in v]) if k == "i_mmap" else v if v.__class__ in _ATOMS else enc(v)
                      for k, v in f.__dict__.items()])


def _notifiers(subs: list) -> tuple:
    """mm->notifier_subscriptions: each subscriber and its plain fields."""
    return tuple([(id(n), *[v for v in getattr(n, "__dict__", {}).values() if v.__class__ in _ATOMS])
                  for n in subs])


def _vma(v: Vma) -> tuple:
    return (id(v), v.start, v.end, v.flags, id(v.file), v.pgoff, v.truncate_count)


def _pte_table(t: PteTable) -> tuple:
    return (id(t), t.pfn, t.ptes.tobytes())


def _lock(lock) -> int:
    """A lock as `mem()` sees it: which lock (its state is the lock requests' footprint)."""
    return id(lock)
