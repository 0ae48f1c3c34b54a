"""Fingerprints of the machine state at a scheduling point, for pruning revisited states.

A state is everything a later step can observe: per CPU its scheduling and TLB state, per task where each
frame of its kernel call stack stands (its function, how many times the engine has resumed it, its
locals: `Task.steps()` in machine/cpu.py, explicit program state that does not depend on the
interpreter's bytecode), the page tables, VMAs and locks of
every mm, the processes, the page cache, the allocator's frames and the RNG. Clocks are left out (in
controlled execution time orders nothing; a local that holds a clock value still counts). Objects are
encoded by content, each once per fingerprint, later references by the order they were first met, so
equal states reached by different schedules encode alike. The fingerprint is Python's hash of that
encoding: equal within one process, which is all the search needs.
"""
from __future__ import annotations

from array import array
from collections import deque
from operator import attrgetter, itemgetter
from types import CodeType, FunctionType, GeneratorType, MethodType
from typing import Any

from pydantic import BaseModel

_ATOMS = (int, str, bool, float, type(None), bytes)
_SKIP_FIELDS = frozenset(("clock", "acquired_at", "preempt_off_since", "compute_end", "ipi_wait_until",
                          "woken_at", "token", "attention", "slice_armed", "compute_left", "sleep_token"))
_FIELDS: dict[type, tuple[str, ...]] = {}
_SEQ = itemgetter(1)         # a pending IPI's queue order


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        seen: list[str] = []
        for k in reversed(cls.__mro__):
            for n in getattr(k, "__slots__", ()):
                if n not in seen and n not in _SKIP_FIELDS and n not in ("__dict__", "__weakref__"):
                    seen.append(n)
        names = _FIELDS[cls] = tuple(seen)
    return names


class Fingerprinter:
    """Encodes states of one machine: `singletons` (objects whose state is not part of a state: the
    kernel object, costs, metrics...) encode as their type name; CPUs and tasks as references."""

    def __init__(self, engine, singletons=(), roots=(), extra=None) -> None:
        self.engine = engine
        self.roots = list(roots)
        self.extra = extra
        self.fixed: dict[int, object] = {}
        for obj in singletons:
            if obj is not None:
                self.fixed[id(obj)] = type(obj).__name__
        self.fixed[id(engine)] = "engine"

    def _memo(self) -> dict:
        memo = dict(self.fixed)
        for c in self.engine.cpus:
            memo[id(c)] = ("cpu", c.id)
        for t in self.engine.tasks.values():
            memo[id(t)] = ("task", t.tid)
        return memo

    def encode(self, x) -> Any:
        """The encoding of one object (and what it reaches), as fingerprint() encodes it."""
        return _encode(x, self._memo())

    def fingerprint(self) -> int:
        eng = self.engine
        memo = self._memo()
        enc = _encode
        parts: list[tuple[Any, ...]] = []
        for c in eng.cpus:
            parts.append((
                c.curr.tid if c.curr else 0, tuple([t.tid for t in c.runqueue]), c.state, c._need_resched,
                c.preempt_count, c.irqs_off, c.point, tuple(c.tlb.items()),
                tuple([(k, t.pfn) for k, t in c.pwc.items()]), enc(c.loaded_mm, memo), enc(c.active_mm, memo),
                c.tlbstate, tuple(sorted(c.dangling)),
                tuple([(enc(f, memo), s.id) for _, _, f, s in sorted(c.pending, key=_SEQ)]) if c.pending else (),
                c.ipi_acks_left, c.ptl_held, enc(c.per_cpu, memo)))
        for tid in sorted(eng.tasks):
            t = eng.tasks[tid]
            parts.append((tid, t.alive, t.in_kernel, enc(t.mm, memo), enc(t.blocked_on, memo),
                          tuple(t.steps()), tuple([enc(g, memo) for g in t.stack])))
        for root in self.roots:
            parts.append(enc(root, memo))
        if self.extra is not None:
            parts.append(self.extra())
        return hash(tuple(parts))


def _encode(x, memo):
    """x's encoding: an atom as it is, an object met before in this fingerprint as its reference, else its
    content by its class's encoder (`_ENCODERS`). An encoder first notes x as met (later references encode
    as ("ref", the order it was met)); the encoders test atoms and references of what x holds inline and
    call the next encoder straight from `_ENCODERS`."""
    if x.__class__ in _ATOM_SET:
        return x
    got = memo.get(id(x))
    if got is not None:
        return got
    return _ENCODERS[x.__class__](x, memo)


_ATOM_SET = frozenset(_ATOMS)


def _seq(x, memo):
    memo[id(x)] = ("ref", len(memo))
    if not x:
        return ()
    return tuple([v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo) for v in x])


def _dict(x, memo):
    memo[id(x)] = ("ref", len(memo))
    if not x:
        return ()
    return tuple([(k if k.__class__ in _ATOM_SET else memo.get(id(k)) or _ENCODERS[k.__class__](k, memo),
                   v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo))
                  for k, v in x.items()])


def _set(x, memo):
    memo[id(x)] = ("ref", len(memo))
    if not x:
        return ("set", ())
    items = [v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo) for v in x]
    try:
        return ("set", tuple(sorted(items)))
    except TypeError:
        return ("set", tuple(sorted(items, key=repr)))


def _gen(x, memo):
    """A generator: its function and locals (where it stands: its task's steps())."""
    memo[id(x)] = ("ref", len(memo))
    frame = x.gi_frame
    if frame is None:
        return ("gen", x.gi_code.co_name)
    return ("gen", x.gi_code.co_name, tuple([
        v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo)
        for v in frame.f_locals.values()]))


def _function(x, memo):
    memo[id(x)] = ("ref", len(memo))
    cells = x.__closure__ or ()
    return ("fn", x.__qualname__, tuple([_encode(cell.cell_contents, memo) for cell in cells]))


def _method(x, memo):
    memo[id(x)] = ("ref", len(memo))
    return ("method", x.__func__.__qualname__, _encode(x.__self__, memo))


def _array(x, memo):
    memo[id(x)] = ("ref", len(memo))
    return ("array", x.typecode, hash(x.tobytes()))


def _constant(x, memo):
    """Immutable inputs (scenario operations, types, code): the same object in every execution."""
    memo[id(x)] = ("ref", len(memo))
    return ("const", id(x))


def _encoder_for(cls: type):
    if issubclass(cls, (BaseModel, type, CodeType)):
        return _constant
    names = _fields(cls)
    get = attrgetter(*names) if names else None
    single = len(names) == 1
    name = cls.__name__

    def obj(x, memo):
        memo[id(x)] = ("ref", len(memo))
        out: list[Any] = [name]
        if get is not None:
            vals = (get(x),) if single else get(x)
            out += [v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo)
                    for v in vals]
        d = getattr(x, "__dict__", None)
        if d:
            out += [(k, v if v.__class__ in _ATOM_SET else memo.get(id(v)) or _ENCODERS[v.__class__](v, memo))
                    for k, v in d.items() if k not in _SKIP_FIELDS]
        return tuple(out)
    return obj


class _Encoders(dict):
    """class -> the encoder of its objects (one of the above, or made by `_encoder_for` on first use)."""

    def __missing__(self, cls: type):
        h = self[cls] = _encoder_for(cls)
        return h


_ENCODERS = _Encoders({list: _seq, tuple: _seq, deque: _seq, dict: _dict, set: _set, frozenset: _set,
                       GeneratorType: _gen, FunctionType: _function, MethodType: _method, array: _array})


def simulation_fingerprinter(sim) -> Fingerprinter:
    """A Fingerprinter for a kernel Simulation (sim/simulation.py) built by explore/target.py."""
    alloc, rcu, rng = sim.alloc, sim.rcu, getattr(sim, "rng", None)

    tlb = sim.tlb

    def frames_and_rng() -> tuple:
        # the 2 MiB TLB entries (machine/tlb.py Tlb.huge), only where some exist: other states keep their
        # fingerprints
        huge = (tuple(sorted((k, tuple(sorted(v))) for k, v in tlb.huge.items())),) if tlb.huge else ()
        return (hash(alloc.refcount.tobytes()), hash(alloc.mapcount.tobytes()), hash(alloc.kind.tobytes()),
                tuple(alloc.nr_used), tuple(rcu.qs),
                hash(rng.getstate()) if rng is not None and getattr(rng, "draws", True) else 0) + huge
    singletons = [sim, sim.kernel, sim.arch, sim.costs, sim.metrics, sim.invariants, sim.tlb, rcu, alloc,
                  sim.scenario, rng]
    return Fingerprinter(sim.engine, singletons, [sim.mms, sim.processes, sim.files, rcu.pending, alloc.free_list],
                         extra=frames_and_rng)
