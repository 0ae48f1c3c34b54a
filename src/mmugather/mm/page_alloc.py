"""Physical frames (struct page) and the page allocator, after mm/page_alloc.c.

Frames live in flat arrays indexed by pfn (refcount, mapcount, kind), not as an object per page, so that a
large resident address space costs a few bytes of host memory per simulated page: 2 + 2 + 1 (a frame can
be mapped and referenced at most MAX_COUNT times; incrementing past it raises OverflowError). The free list
is a `PfnRuns` (frames freed in address order cost nothing each). A freed frame is poisoned (kind FREE): any
later use of it through a stale translation is a use after free. Populating a range reserves its frames
first (`reserve()`): the arrays grow once instead of leaving freed copies of themselves in the host's heap.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter

import numpy as np

from mmugather.mm.pfn_runs import PfnRuns, ascending_runs

# Frame kinds. FREE doubles as the poison marker. DEVICE: a driver's buffer, mapped into user space by
# remap_pfn_range() (mm/pfnmap.py) with special PTEs: no refcount or rmap of the mappings, freed by the driver.
FREE, ANON, FILE, PGTABLE, BATCH, DEVICE = range(6)
_SMALL_RELEASE = 16     # PageAlloc.release_span(): below this many frames, release_array() of the pfns
KIND_NAMES = ("free", "anon", "file", "page-table", "gather-batch", "device")

GFP_KERNEL = "GFP_KERNEL"   # may sleep, never fails in this model
GFP_NOWAIT = "GFP_NOWAIT"   # atomic; fails with probability fail_nowait
MAX_COUNT = 32767           # refcount and mapcount are int16


_ZEROS = memoryview(bytes(1 << 16))


class PageAlloc:
    """The buddy allocator's observable contract: hand out free frames, take them back, count them."""

    def __init__(self, rng, fail_nowait: float, on_free, on_free_many, on_free_array=None,
                 on_free_each_array=None) -> None:
        if not 0.0 <= fail_nowait <= 1.0:
            raise ValueError("fail_nowait must be a probability in [0, 1]")
        self.refcount = array("h")
        self.mapcount = array("h")
        self.kind = array("b")
        self.free_list = PfnRuns()
        self.nr_used = [0] * len(KIND_NAMES)
        self.rng = rng
        self.fail_nowait = fail_nowait
        self.on_free = on_free
        self.on_free_many = on_free_many
        self.on_free_array = on_free_array
        self.on_free_each_array = on_free_each_array
        self.nowait_attempts = 0
        self.nowait_failures = 0
        self.zero_pfn = -1            # the shared zero page, allocated on first use (get_zero_pfn)
        self.top = 0                  # frames handed out so far: the next fresh pfn (see reserve())

    def alloc_page(self, kind: int, gfp: str = GFP_KERNEL) -> int:
        """__alloc_pages(): return a pfn with refcount 1, or -1 when a GFP_NOWAIT allocation fails."""
        if gfp is GFP_NOWAIT:
            self.nowait_attempts += 1
            if self.fail_nowait and (self.fail_nowait >= 1.0 or self.rng.random() < self.fail_nowait):
                self.nowait_failures += 1
                return -1
        if self.free_list:
            pfn = self.free_list.pop()
            self.refcount[pfn] = 1
            self.mapcount[pfn] = 0
            self.kind[pfn] = kind
        else:
            pfn = self.top
            self.top += 1
            if pfn < len(self.refcount):             # a reserved frame
                self.refcount[pfn] = 1
                self.kind[pfn] = kind
            else:
                self.refcount.append(1)
                self.mapcount.append(0)
                self.kind.append(kind)
        self.nr_used[kind] += 1
        return pfn

    def get_zero_pfn(self) -> int:
        """my_zero_pfn(): the shared zero page (ZERO_PAGE(0), arch/x86/include/asm/pgtable.h), a reserved
        frame read faults of anonymous memory map (mm/memory.c do_anonymous_page()); no rmap or RSS is kept
        for it and it is never freed. Allocated here on first use (kind FILE, refcount 1 for good)."""
        if self.zero_pfn < 0:
            self.zero_pfn = self.alloc_page(FILE)
        return self.zero_pfn

    def alloc_bulk(self, kind: int, n: int) -> range | list[int]:
        """Allocate n frames at set-up time (populating a scenario), without per-page Python work."""
        if n <= 0:
            return range(0)
        take = min(n, len(self.free_list))
        pfns: list[int] = []
        for _ in range(take):
            pfn = self.free_list.pop()
            self.refcount[pfn] = 1
            self.mapcount[pfn] = 0
            self.kind[pfn] = kind
            pfns.append(pfn)
        rest = n - take
        first = self.top
        self._fresh(kind, rest)
        self.nr_used[kind] += n
        return pfns + list(range(first, first + rest)) if pfns else range(first, first + rest)

    def _fresh(self, kind: int, n: int) -> None:
        """Hand out the next n fresh frames (refcount 1, mapcount 0, `kind`): reserved ones first."""
        refcount, mapcount, kinds = self.refcount, self.mapcount, self.kind
        first = self.top
        self.top += n
        room = min(n, len(refcount) - first)
        if room > 0:
            refcount[first:first + room] = array("h", [1]) * room
            kinds[first:first + room] = array("b", [kind]) * room
            n -= room
        if n:
            refcount.extend(array("h", [1]) * n)
            mapcount.extend(array("h", bytes(2 * n)))
            kinds.extend(array("b", [kind]) * n)

    def reserve(self, n: int) -> None:
        """Set-up (populating a range): room for n more fresh frames, made at once: one growth of each
        frame array, not one per allocation, which would leave a trail of freed array copies in the host's
        heap (host memory; the frames, their numbers and their order are the same). The room is used by
        the next fresh allocations; unreserve() drops what is left of it."""
        self.unreserve()
        for arr in (self.refcount, self.mapcount, self.kind):    # zeros (kind FREE), a chunk at a time
            size = arr.itemsize * n
            for a in range(0, size, len(_ZEROS)):
                arr.frombytes(_ZEROS[:min(len(_ZEROS), size - a)])

    def unreserve(self) -> None:
        """Drop the reserved frames not handed out: the frame arrays end at the last frame handed out."""
        for arr in (self.refcount, self.mapcount, self.kind):
            del arr[self.top:]

    def alloc_folio(self, kind: int, nr_pages: int) -> int:
        """folio_alloc() of a large folio at set-up time: nr_pages contiguous frames, each with refcount 1
        (the model keeps a reference per page), taken above every frame handed out so far (the model's
        memory is unbounded; the buddy allocator would hand out a naturally aligned block). Returns the
        first frame."""
        if nr_pages < 1:
            raise ValueError(f"alloc_folio: nr_pages must be positive, got {nr_pages}")
        first = self.top
        self._fresh(kind, nr_pages)
        self.nr_used[kind] += nr_pages
        return first

    def alloc_many(self, kind: int, n: int, gfp: str) -> list[int]:
        """alloc_page(kind, gfp) n times, for allocations that cannot fail (GFP_KERNEL, or GFP_NOWAIT with
        fail_nowait 0): the same frames in the same order, without the per-call work."""
        if gfp is GFP_NOWAIT:
            if self.fail_nowait:
                raise AssertionError("alloc_many: GFP_NOWAIT allocations may fail here")
            self.nowait_attempts += n
        take = min(n, len(self.free_list))
        pfns = [self.free_list.pop() for _ in range(take)]
        refcount, mapcount, kinds = self.refcount, self.mapcount, self.kind
        for pfn in pfns:
            refcount[pfn] = 1
            mapcount[pfn] = 0
            kinds[pfn] = kind
        rest = n - take
        if rest:
            first = self.top
            self._fresh(kind, rest)
            pfns += range(first, first + rest)
        self.nr_used[kind] += n
        return pfns

    def free_array(self, cpu, pfns: np.ndarray) -> None:
        """__free_page() of each of pfns (distinct frames), in order, at once: poisoned, back on the free
        list, reported to `on_free_each_array`."""
        if not len(pfns):
            return
        refcount, _, kind = self.views()
        k = kind[pfns]
        if (k == FREE).any():
            raise AssertionError(f"free_page: pfn {int(pfns[np.argmax(k == FREE)])} freed twice")
        refcount[pfns] = 0
        kind[pfns] = FREE
        del refcount, kind
        for kd, cnt in enumerate(kind_counts(k)):
            self.nr_used[kd] -= cnt
        self.free_list.extend(pfns)
        self.on_free_each_array(cpu, pfns, k)

    def put_page(self, cpu, pfn: int) -> bool:
        """put_page(): drop a reference; free the frame when it was the last. Returns True if freed."""
        rc = self.refcount[pfn] - 1
        if rc < 0:
            raise AssertionError(f"put_page: pfn {pfn} has refcount 0 ({KIND_NAMES[self.kind[pfn]]})")
        self.refcount[pfn] = rc
        if rc:
            return False
        self.free_page(cpu, pfn)
        return True

    def release_pages(self, cpu, pfns: list[int]) -> None:
        """release_pages(), mm/swap.c: put_page() on each; frames whose last reference goes are freed."""
        fp, fk = self._put_pages(pfns)
        if fp:
            first, n = fp[0], len(fp)
            if fp[-1] == first + n - 1 and fp == list(range(first, first + n)):
                self.free_list.push_run(first, n)        # consecutive frames: one run
            else:
                for pfn in fp:
                    self.free_list.append(pfn)
            self.on_free_many(cpu, fp, fk)

    def _put_pages(self, pfns) -> tuple[list[int], list[int]]:
        """put_page() on each of `pfns`, in order: the frames whose last reference went (marked FREE, not yet
        on the free list) and their kinds."""
        refcount = self.refcount
        kind = self.kind
        nr_used = self.nr_used
        fp, fk = [], []                                  # the frames freed and their kinds
        for pfn in pfns:
            rc = refcount[pfn] - 1
            refcount[pfn] = rc
            if rc:
                if rc < 0:
                    raise AssertionError(f"put_page: pfn {pfn} has refcount 0 ({KIND_NAMES[kind[pfn]]})")
                continue
            k = kind[pfn]
            if k == FREE:
                raise AssertionError(f"free_page: pfn {pfn} freed twice")
            kind[pfn] = FREE
            nr_used[k] -= 1
            fp.append(pfn)
            fk.append(k)
        return fp, fk

    def _release_flagged(self, cpu, pfns: list[int], flags: list[bool]) -> None:
        """release_pages() of `pfns` in order, each freed frame reported with its own PTE-lock flag: the
        frees of several flushes, some under the PTE lock, when a frame occurs twice."""
        fp, fk, fu = [], [], []
        for under, group in groupby(zip(pfns, flags), key=itemgetter(1)):
            freed, kinds = self._put_pages([pfn for pfn, _ in group])
            fp += freed
            fk += kinds
            fu += [under] * len(freed)
        for pfn in fp:
            self.free_list.append(pfn)
        if fp:
            self.on_free_array(cpu, np.array(fp, dtype=np.int64), np.array(fk, dtype=np.int8),
                               np.array(fu, dtype=bool))

    def views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views of (refcount, mapcount, kind). Drop them before the next allocation: an array that
        exports its buffer cannot grow."""
        return (np.frombuffer(self.refcount, dtype=np.int16), np.frombuffer(self.mapcount, dtype=np.int16),
                np.frombuffer(self.kind, dtype=np.int8))

    def release_array(self, cpu, pfns: np.ndarray, under_lock: np.ndarray | None = None,
                      fs: FrameSpan | None = None) -> None:
        """release_pages() of a numpy array of pfns, in one pass: the same frames freed in the same order,
        reported to `on_free_array` at once. `under_lock` (one flag per pfn) says which releases happen
        with a PTE lock held, when not all alike (default: whether `cpu` holds one now). `fs`:
        FrameSpan.of(pfns), when the caller has it."""
        if not len(pfns):
            return
        if fs is None:
            fs = FrameSpan.of(pfns)
        if fs is None:                                   # a frame twice (a file page two VMAs map): its last
            if under_lock is None:                       # reference goes at its second occurrence, so go
                self.release_pages(cpu, pfns.tolist())   # one by one
            else:
                self._release_flagged(cpu, pfns.tolist(), under_lock.tolist())
            return
        refcount, _, kind = self.views()
        kd: int | None = None                            # the kind of every frame freed, when one
        if fs.spanned:
            zz, freed, k, kinds, z, kd = self._drop_spanned(refcount, kind, pfns, fs)
        else:
            zz, freed, k = self._drop_scattered(refcount, kind, pfns)
        if kd is None:
            counts = kind_counts(k)
        else:
            counts = [0] * len(KIND_NAMES)
            counts[kd] = len(k)
        if counts[FREE]:
            raise AssertionError(f"free_page: pfn {int(freed[np.argmax(k == FREE)])} freed twice")
        if not fs.spanned:
            kind[freed] = FREE
        elif z is not None:
            kinds *= ~z                                  # kind FREE (0) where freed
        elif fs.holes is not None and len(fs.holes):     # every frame of the span but its holes
            saved = kinds[fs.holes]
            kinds.fill(FREE)
            kinds[fs.holes] = saved
        else:
            kinds.fill(FREE)
        del refcount, kind
        if len(freed):
            for kd, cnt in enumerate(counts):
                self.nr_used[kd] -= cnt
            self.free_list.extend(freed, increasing=fs.increasing, runs=fs.runs(freed) if freed is pfns else None)
            if under_lock is not None and zz is not None:
                under_lock = under_lock[zz]
            self.on_free_array(cpu, freed, k, under_lock, counts[PGTABLE])

    def release_span(self, cpu, fs: FrameSpan, starts: np.ndarray, lens: np.ndarray,
                     expand: Callable[[], np.ndarray]) -> None:
        """release_array(cpu, expand(), fs=fs) of the pfns of ascending runs (`starts`, `lens`; `fs` their
        FrameSpan.of_runs(), which lists its holes) that nothing reaches (the caller found
        Invariants.reached() None for them): when every frame's last reference goes, the span is updated
        whole and the free list takes the runs, with no pfn array made; else (the drop undone)
        release_array() of expand()."""
        lo, hi, holes = fs.lo, fs.hi, fs.holes
        n = int(lens.sum())
        if holes is None or n < _SMALL_RELEASE:
            self.release_array(cpu, expand(), fs=fs)
            return
        refcount, _, kind = self.views()
        rc = refcount[lo:hi]
        rc -= 1                                          # (the holes put back: only the runs' frames drop)
        if len(holes):
            rc[holes] += 1
        if int(np.count_nonzero(rc == 0)) - (int(np.count_nonzero(rc[holes] == 0)) if len(holes) else 0) != n:
            rc += 1                                      # a frame keeps a reference (or had none): undone,
            if len(holes):                               # release_array() of the pfns instead
                rc[holes] -= 1
            del refcount, kind, rc
            self.release_array(cpu, expand(), fs=fs)
            return
        kinds = kind[lo:hi]
        kd0 = int(kinds[int(starts[0]) - lo])
        kd: int | None = kd0
        if int(np.count_nonzero(kinds == kd0)) - (int(np.count_nonzero(kinds[holes] == kd0)) if len(holes) else 0) == n:
            k: np.ndarray = np.broadcast_to(np.int8(kd0), n)   # (every frame of one kind)
        else:
            kept = np.ones(hi - lo, dtype=bool)
            kept[holes] = False
            k, kd = kinds[kept], None
        counts = kind_counts(k) if kd is None else [n if i == kd else 0 for i in range(len(KIND_NAMES))]
        if counts[FREE]:
            raise AssertionError(f"free_page: pfn {int(expand()[np.argmax(k == FREE)])} freed twice")
        if len(holes):                                   # every frame of the span but its holes
            saved = kinds[holes]
            kinds.fill(FREE)
            kinds[holes] = saved
        else:
            kinds.fill(FREE)
        del refcount, kind, rc, kinds
        for i, cnt in enumerate(counts):
            self.nr_used[i] -= cnt
        keep = np.empty(len(starts), dtype=bool)         # the runs as FrameSpan.runs() gives them: merged
        keep[0] = True                                   # where one goes on from the last
        keep[1:] = starts[1:] != starts[:-1] + lens[:-1]
        first = np.flatnonzero(keep)
        self.free_list.extend_runs(starts[first], np.add.reduceat(lens, first), np.zeros(len(first), dtype=np.int64))
        self.on_free_array(cpu, None, k, None, counts[PGTABLE])

    def _drop_spanned(self, refcount: np.ndarray, kind: np.ndarray, pfns: np.ndarray, fs: FrameSpan) -> tuple:
        """release_array's reference drop for frames in a FrameSpan mask (`refcount`, `kind`: the views):
        (which of pfns were freed (None: all), those frames, their kinds, the span's kinds, which frames of
        the span were freed (None: every frame of pfns and none else, when the span knows its holes), the
        kind of every frame freed when it is one and known (else None))."""
        lo, hi, m, holes = fs.lo, fs.hi, fs.mask, fs.holes
        rc = refcount[lo:hi]
        if holes is None:
            rc -= m
        else:                                            # (no bool arithmetic over the span)
            rc -= 1
            if len(holes):
                rc[holes] += 1
        z = rc == 0
        if holes is None:
            z &= m
        elif len(holes):
            z[holes] = False
        nz = int(np.count_nonzero(z))
        if nz != len(pfns) and rc.min() < 0:             # (every frame of pfns at 0: none below)
            self._bad_release(pfns, (rc < 0)[pfns - lo])
        kinds = kind[lo:hi]
        if fs.increasing:
            if holes is not None and not len(holes) and nz == len(z):    # (pfns is lo, lo + 1, ..., hi - 1)
                return None, pfns, kinds.copy(), kinds, None, None
            if holes is not None and nz == len(pfns):    # every frame of pfns freed
                k, kd = _kinds_of(kinds, z, holes, int(kinds[int(pfns[0]) - lo]))
                return None, pfns, k, kinds, None, kd
            k = kinds[z]
            if len(k) == len(pfns):                      # every frame freed
                return None, pfns, k, kinds, z, None
            freed = np.flatnonzero(z)
            freed += lo
            return z[pfns - lo], freed, k, kinds, z, None
        if nz == len(pfns):                              # every frame of pfns freed (z marks no other)
            return None, pfns, kinds[pfns - lo], kinds, z, None
        zz = z[pfns - lo]
        freed = pfns[zz]
        return zz, freed, kinds[freed - lo], kinds, z, None

    def _drop_scattered(self, refcount: np.ndarray, kind: np.ndarray, pfns: np.ndarray
                        ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """release_array's reference drop for frames in no FrameSpan mask (`refcount`, `kind`: the views):
        (which of pfns were freed (None: all), those frames, their kinds)."""
        rc = refcount[pfns] - 1
        if rc.min() < 0:
            self._bad_release(pfns, rc < 0)
        refcount[pfns] = rc
        zz = rc == 0
        if zz.all():                                     # every frame freed
            return None, pfns, kind[pfns]
        freed = pfns[zz]
        return zz, freed, kind[freed]

    def _bad_release(self, pfns: np.ndarray, bad: np.ndarray) -> None:
        pfn = int(pfns[np.argmax(bad)])
        raise AssertionError(f"put_page: pfn {pfn} has refcount 0 ({KIND_NAMES[self.kind[pfn]]})")

    def free_page(self, cpu, pfn: int) -> None:
        """__free_page(): poison the frame and return it to the free list (LIFO, like the pcp lists)."""
        kind = self.kind[pfn]
        if kind == FREE:
            raise AssertionError(f"free_page: pfn {pfn} freed twice")
        self.refcount[pfn] = 0
        self.kind[pfn] = FREE
        self.nr_used[kind] -= 1
        self.free_list.append(pfn)
        self.on_free(cpu, pfn, kind)


_BINCOUNT_KINDS = 4096      # kind_counts(): up to this many frames, one np.bincount (its int64 copy is small)


def kind_counts(kinds: np.ndarray) -> list[int]:
    """How many of the frames whose kinds are `kinds` (an int8 array) are of each kind, FREE first."""
    if len(kinds) <= _BINCOUNT_KINDS:                # (one call instead of one per kind)
        return np.bincount(kinds, minlength=len(KIND_NAMES)).tolist()
    counts, left = [], len(kinds)
    for kd in range(len(KIND_NAMES)):
        n = int(np.count_nonzero(kinds == kd)) if left else 0
        counts.append(n)
        left -= n
    return counts


def _kinds_of(kinds: np.ndarray, z: np.ndarray, holes: np.ndarray, kd: int) -> tuple[np.ndarray, int | None]:
    """The kinds of the frames of a span (`kinds`) but its `holes` (the frames `z` marks), in order, and
    kd when they are all kd (then made at once: one count over the span, no compaction of it), else None."""
    n = len(kinds) - len(holes)
    same = int(np.count_nonzero(kinds == kd)) - int(np.count_nonzero(kinds[holes] == kd))
    # (when all kd: a read-only view of one byte, as np.broadcast_to() makes it, without its Python cost)
    return (np.ndarray((n,), np.int8, _KIND_BYTE[kd], 0, (0,)), kd) if same == n else (kinds[z], None)


_KIND_BYTE = [bytes([kd]) for kd in range(len(KIND_NAMES))]     # (_kinds_of(): the buffer of each kind)


_GAPS_CHUNK = 1 << 16       # _gaps(): pfns at a time (bounded temporaries)


def _gaps(pfns: np.ndarray, chunk: int = _GAPS_CHUNK) -> np.ndarray:
    """The indices i with pfns[i + 1] != pfns[i] + 1, found `chunk` at a time (bounded temporaries)."""
    n = len(pfns)
    if n <= chunk + 1:
        return np.flatnonzero(pfns[1:] - pfns[:-1] != 1)
    parts = []
    for a in range(0, n - 1, chunk):
        b = min(n - 1, a + chunk)
        g = np.flatnonzero(pfns[a + 1:b + 1] - pfns[a:b] != 1)
        g += a
        parts.append(g)
    return np.concatenate(parts)


_NO_HOLES = np.zeros(0, dtype=np.int64)             # (FrameSpan.holes of a run; shared, read-only)
_FEW_GAPS = 16      # FrameSpan.of(): up to this many gaps, their bounds and holes in plain Python
_FEW_HOLES = 256    # (and up to this many holes as one list)
_NO_HOLES.flags.writeable = False


class FrameSpan:
    """A set of distinct frames given as a pfn array, prepared for bulk updates of the frame arrays:
    [lo, hi) covers them; `increasing` when the array is sorted; `gaps`, when no pfn is the one before it
    minus one (sorted or not: every run of consecutive frames goes up), where the array is not a run of
    consecutive frames (the indices i with pfns[i + 1] != pfns[i] + 1); `holes`: when the span has few
    frames not in the set, their offsets in it (else None); `mask`: else, when the span is dense enough,
    marks the frames in it (else None: index them). `spanned`: holes or mask, the span may be updated
    whole."""

    __slots__ = ("lo", "hi", "mask", "increasing", "gaps", "holes")
    lo: int
    hi: int
    mask: np.ndarray | None
    increasing: bool
    gaps: np.ndarray | None
    holes: np.ndarray | None

    DENSE = 8           # use a mask over the span when it is at most this many times the frames

    @classmethod
    def of(cls, pfns: np.ndarray, gaps: np.ndarray | None = None) -> FrameSpan | None:
        """The span of pfns, or None when some frame occurs twice. `gaps`: the indices i with
        pfns[i + 1] != pfns[i] + 1, when the caller knows them (pfn_runs.run_gaps())."""
        n = len(pfns)
        g: np.ndarray | None = None
        if gaps is None and n <= _GAPS_CHUNK + 1:        # (one difference array: the gaps and their sizes)
            g = pfns[1:] - pfns[:-1]
            gaps = np.flatnonzero(g != 1)
        elif gaps is None:
            gaps = _gaps(pfns)                           # where the array is not a run of consecutive frames
        fs = cls()
        fs.holes = fs.mask = None
        if not len(gaps):                                # one run of consecutive frames
            fs.increasing, fs.gaps, fs.lo, fs.hi, fs.holes = True, gaps, int(pfns[0]), int(pfns[-1]) + 1, _NO_HOLES
            return fs
        if len(gaps) <= _FEW_GAPS and int(pfns[-1]) - int(pfns[0]) + 1 - n <= _FEW_HOLES:   # (holes if sorted)
            fs._bound_few(pfns, gaps)
        else:
            fs._bound(pfns, gaps, g)
        lo, hi = fs.lo, fs.hi
        if fs.holes is not None:
            return fs
        if hi - lo <= cls.DENSE * n:
            m = np.zeros(hi - lo, dtype=bool)
            m[pfns - lo] = True
            if not fs.increasing and int(np.count_nonzero(m)) != n:
                return None
            fs.mask = m
        elif not fs.increasing:
            srt = np.sort(pfns)
            if (srt[1:] == srt[:-1]).any():
                return None
        return fs

    def _bound(self, pfns: np.ndarray, gaps: np.ndarray, g: np.ndarray | None) -> None:
        """of()'s increasing, gaps, lo, hi and (increasing, with few holes) holes, for some gaps (`g`: the
        differences of pfns, when made)."""
        n = len(pfns)
        d = pfns[gaps + 1] - pfns[gaps] if g is None else g[gaps]
        self.increasing = bool((d > 0).all())
        self.gaps = gaps if self.increasing or not (d == -1).any() else None
        lo = int(pfns.min()) if not self.increasing else int(pfns[0])
        hi = (int(pfns.max()) if not self.increasing else int(pfns[-1])) + 1
        self.lo, self.hi = lo, hi
        if self.increasing and hi - lo - n <= n >> 4:    # a few holes: list them, no mask
            first, size = pfns[gaps] + 1 - lo, d - 1
            starts = np.cumsum(size) - size
            self.holes = np.arange(hi - lo - n) + np.repeat(first - starts, size)

    def _bound_few(self, pfns: np.ndarray, gaps: np.ndarray) -> None:
        """_bound() for at most _FEW_GAPS gaps (and, when sorted, _FEW_HOLES holes), from the pfns on each
        side of them as Python ints."""
        n = len(pfns)
        ends = pfns[gaps].tolist()                       # the last pfn of each run but the last
        starts = pfns[gaps + 1].tolist()                 # the first of each run but the first
        d = [b - a for a, b in zip(ends, starts)]
        self.increasing = min(d) > 0
        ups = self.increasing or -1 not in d             # every run goes up: its first pfn is its least
        self.gaps = gaps if ups else None
        first, last = int(pfns[0]), int(pfns[-1])
        if self.increasing:
            lo, hi = first, last + 1
        elif ups:
            lo, hi = min(first, *starts), max(last, *ends) + 1
        else:
            lo, hi = int(pfns.min()), int(pfns.max()) + 1
        self.lo, self.hi = lo, hi
        if self.increasing and hi - lo - n <= n >> 4:    # a few holes: list them, no mask
            holes: list[int] = []
            for a, b in zip(ends, starts):
                holes += range(a + 1 - lo, b - lo)
            self.holes = np.array(holes, dtype=np.int64)

    @classmethod
    def of_runs(cls, starts: np.ndarray, lens: np.ndarray) -> FrameSpan | None:
        """FrameSpan.of() of the pfns of ascending runs (first pfn, length), from the runs alone, when it
        lists its holes (None otherwise, or when they do not go up: make the pfns then)."""
        n = int(lens.sum())
        ends = np.cumsum(lens)
        brk = starts[1:] != starts[:-1] + lens[:-1]       # the runs after which the pfns do not go up by one
        gaps = ends[:-1][brk] - 1
        last = (starts[:-1] + lens[:-1] - 1)[brk]        # pfns[gaps]
        d = starts[1:][brk] - last                        # pfns[gaps + 1] - pfns[gaps]
        lo, hi = int(starts[0]), int(starts[-1] + lens[-1])
        if len(d) and not (d > 0).all() or hi - lo - n > n >> 4:
            return None
        fs = cls()
        fs.increasing, fs.gaps, fs.lo, fs.hi, fs.mask = True, gaps, lo, hi, None
        if len(gaps):
            first, size = last + 1 - lo, d - 1
            cstarts = np.cumsum(size) - size
            fs.holes = np.arange(hi - lo - n) + np.repeat(first - cstarts, size)
        else:
            fs.holes = _NO_HOLES
        return fs

    @property
    def spanned(self) -> bool:
        return self.holes is not None or self.mask is not None

    def prefix(self, pfns: np.ndarray, n: int) -> FrameSpan | None:
        """The span of pfns[:n] (0 < n), from this one (of pfns) when pfns is sorted, else None."""
        if not self.increasing or self.gaps is None:
            return None
        fs = FrameSpan()
        fs.increasing, fs.lo, fs.hi = True, self.lo, int(pfns[n - 1]) + 1
        fs.mask = self.mask[:fs.hi - fs.lo] if self.mask is not None else None
        fs.holes = None if self.holes is None else self.holes[:int(np.searchsorted(self.holes, fs.hi - fs.lo))]
        fs.gaps = self.gaps[:int(np.searchsorted(self.gaps, n - 1))]
        return fs

    def runs(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """pfn_runs.runs_of(pfns) from the gaps: its runs all go up (None when some may go down)."""
        if self.gaps is None:
            return None
        return ascending_runs(pfns, self.gaps)

    def count_kind(self, kind: np.ndarray, kd: int) -> int:
        """How many of the frames are of kind kd (`kind`: the frame kinds, PageAlloc.views()[2]); for a
        spanned one."""
        if not self.spanned:
            raise ValueError("FrameSpan.count_kind: not spanned")
        same = kind[self.lo:self.hi] == kd
        if self.holes is None:
            same &= self.mask
        elif len(self.holes):
            same[self.holes] = False
        return int(np.count_nonzero(same))
