"""A sequence of pfns stored as runs, for lists that hold millions of frames at once (the allocator's free
list, a 3.0 gather that batches a whole address space before its one flush).

Frames handed out together are numbered consecutively, and teardown gives them back in address order, so
such a list is mostly a few runs of consecutive pfns. `PfnRuns` keeps an `array('i')` in which a value >= 0
is a pfn and a negative value right after a pfn p says that p starts a run: -(len << 1 | desc) means the
pfns p, p+1, ... (p, p-1, ... when desc), len of them, in that order. It is a drop-in for the list or
array it replaces (append, pop from the end, len, iteration in order) plus bulk forms on numpy arrays.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterator
from operator import sub

import numpy as np

_SMALL = 16          # below this, bulk operations go one pfn at a time


class PfnRuns:
    """Pfns in the order appended; `pop()` takes the last one (LIFO), iteration yields them in order."""

    __slots__ = ("a", "n")

    def __init__(self, a: array | None = None, n: int = 0) -> None:
        self.a = array("i") if a is None else a          # an encoding made by this module, holding n pfns
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self):
        return iter(self.to_array().tolist())

    def __repr__(self) -> str:
        return f"PfnRuns({len(self.a)} entries for {self.n} pfns)"

    def append(self, p: int) -> None:
        a = self.a
        if a:
            t = a[-1]
            if t >= 0:
                if p == t + 1:
                    a.append(-4)                  # run of 2, ascending
                elif p == t - 1:
                    a.append(-5)                  # run of 2, descending
                else:
                    a.append(p)
            else:
                m = -t
                ln = m >> 1
                last = a[-2] - (ln - 1) if m & 1 else a[-2] + (ln - 1)
                if p == (last - 1 if m & 1 else last + 1):
                    a[-1] = t - 2                 # one more in the run
                else:
                    a.append(p)
        else:
            a.append(p)
        self.n += 1

    def push_run(self, start: int, n: int) -> None:
        """append() of start, start + 1, ..., start + n - 1 (n >= 1), in O(1), with the same encoding."""
        a = self.a
        if a:
            t = a[-1]
            if t >= 0:
                if t == start - 1:
                    a.append(-((n + 1) << 1))
                    self.n += n
                    return
                if t == start + 1:                      # start would go down from t: one at a time
                    for p in range(start, start + n):
                        self.append(p)
                    return
            elif not -t & 1:
                if a[-2] + ((-t) >> 1) == start:
                    a[-1] = t - (n << 1)
                    self.n += n
                    return
            elif a[-2] - ((-t) >> 1) == start:         # continues a descending run: one at a time
                for p in range(start, start + n):
                    self.append(p)
                return
        a.append(start)
        if n > 1:
            a.append(-(n << 1))
        self.n += n

    def pop(self) -> int:
        """The last pfn appended, removed."""
        a = self.a
        t = a[-1]
        self.n -= 1
        if t >= 0:
            a.pop()
            return t
        m = -t
        ln = m >> 1
        last = a[-2] - (ln - 1) if m & 1 else a[-2] + (ln - 1)
        if ln == 2:
            a.pop()
        else:
            a[-1] = t + 2
        return last

    def tobytes(self) -> bytes:
        """The encoding (equal for equal sequences built by append/push_run/pop; explore/ fingerprints it)."""
        return self.a.tobytes()

    def clear(self) -> None:
        del self.a[:]
        self.n = 0

    # ------------------------------------------------------------ bulk forms
    def extend(self, pfns, increasing: bool = False, runs: tuple | None = None) -> None:
        """Append every pfn of a numpy array (or sequence), in order (`increasing`: the caller knows they
        are sorted; `runs`: their runs_of(), when the caller has them)."""
        pfns = np.asarray(pfns)
        n = len(pfns)
        if n < _SMALL:
            for p in pfns.tolist():
                self.append(p)
            return
        if increasing and pfns[-1] - pfns[0] == n - 1:     # one run
            self._extend_few([int(pfns[0])], [n], [0])
            return
        self.extend_runs(*(runs if runs is not None else runs_of(pfns, increasing)))

    def extend_run(self, start: int, n: int) -> None:
        """extend() of the pfns start, start + 1, ..., start + n - 1 (n >= 0), with no arrays: the same
        encoding (extend_runs() of the one run, below _SMALL pfns one append() each)."""
        if n < _SMALL:
            for p in range(start, start + n):
                self.append(p)
            return
        self._extend_few([start], [n], [0])

    def extend_runs(self, starts, lens, descs) -> None:
        """Append runs (numpy arrays: first pfn, length >= 1, descending flag), in order."""
        if len(starts) <= _SMALL:                       # (a few runs: as Python ints, no arrays to build)
            self._extend_few(starts.tolist(), lens.tolist(), descs.tolist())
            return
        a = self.a
        total = int(lens.sum())
        # join the first run to the last one here when it continues it upwards (the common case: frames
        # freed in address order over several calls)
        if a and not descs[0]:
            t = a[-1]
            s0, l0 = int(starts[0]), int(lens[0])
            if t >= 0 and s0 == t + 1:
                a.append(-((l0 + 1) << 1))
                starts, lens, descs = starts[1:], lens[1:], descs[1:]
            elif t < 0 and not -t & 1 and s0 == a[-2] + ((-t) >> 1):
                a[-1] = -((((-t) >> 1) + l0) << 1)
                starts, lens, descs = starts[1:], lens[1:], descs[1:]
        if lens.max() == 1:                             # (runs of one: their pfns)
            a.frombytes(starts.astype(np.int32).tobytes())
        else:
            out = np.empty(2 * len(starts), dtype=np.int32)
            out[0::2] = starts
            out[1::2] = -((lens.astype(np.int64) << 1) | descs)
            keep = np.ones(len(out), dtype=bool)
            keep[1::2] = lens > 1
            a.frombytes(out[keep].tobytes())
        self.n += total

    def _extend_few(self, starts: list[int], lens: list[int], descs: list[int]) -> None:
        """extend_runs() of runs given as lists: the same encoding."""
        a = self.a
        k = 0
        if a and starts and not descs[0]:               # (joined to the last run here, as extend_runs())
            t, s0 = a[-1], starts[0]
            if t >= 0 and s0 == t + 1:
                a.append(-((lens[0] + 1) << 1))
                k = 1
            elif t < 0 and not -t & 1 and s0 == a[-2] + ((-t) >> 1):
                a[-1] = -((((-t) >> 1) + lens[0]) << 1)
                k = 1
        for s0, l0, d0 in zip(starts[k:], lens[k:], descs[k:]):
            a.append(s0)
            if l0 > 1:
                a.append(-((l0 << 1) | d0))
        self.n += sum(lens)

    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The runs in order: (first pfn, length, descending) as numpy int64 arrays."""
        a = np.frombuffer(self.a, dtype=np.int32) if self.a else np.zeros(0, dtype=np.int32)
        marker = a < 0
        is_start = ~marker
        starts = a[is_start].astype(np.int64)
        lens = np.ones(len(starts), dtype=np.int64)
        descs = np.zeros(len(starts), dtype=np.int64)
        if marker.any():
            # the start a marker belongs to is the number of starts before it, minus one
            owner = np.cumsum(is_start)[marker] - 1
            m = -a[marker].astype(np.int64)
            lens[owner] = m >> 1
            descs[owner] = m & 1
        return starts, lens, descs

    def to_array(self) -> np.ndarray:
        """Every pfn in order, as a numpy int64 array."""
        return expand_runs(*self.runs())

    def tolist(self) -> list[int]:
        return self.to_array().tolist()


def ascending_runs(pfns: np.ndarray, brk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of a pfn array whose runs of consecutive frames all go up (a sorted one, or FrameSpan's
    when no pfn is the one before it minus one): (starts, lengths, all-zero descending flags), given
    `brk`: the index of the last pfn of each run but the last."""
    if len(brk) <= _SMALL:                             # (a few runs: their bounds as Python ints)
        starts = [0, *(g + 1 for g in brk.tolist())]
        return (pfns[starts], np.array(list(map(sub, [*starts[1:], len(pfns)], starts)), dtype=np.int64),
                np.zeros(len(starts), dtype=np.int64))
    first = np.empty(len(brk) + 1, dtype=np.int64)
    first[0] = 0
    first[1:] = brk
    first[1:] += 1
    lens = np.empty_like(first)
    lens[:-1] = first[1:] - first[:-1]
    lens[-1] = len(pfns) - first[-1]
    return pfns[first], lens, np.zeros(len(first), dtype=np.int64)


def runs_of(pfns: np.ndarray, increasing: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a pfn sequence into runs of consecutive pfns (each ascending or descending by one);
    `increasing`: the caller knows the sequence is sorted (only ascending runs, found faster)."""
    pfns = np.asarray(pfns, dtype=np.int64)
    n = len(pfns)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    if increasing:
        return ascending_runs(pfns, np.flatnonzero(pfns[1:] - pfns[:-1] != 1))
    g = pfns[1:] - pfns[:-1]
    if n > 1 and g.min() == 1 == g.max():               # one ascending run (frames handed out together)
        return pfns[:1].copy(), np.array([n], dtype=np.int64), np.zeros(1, dtype=np.int64)
    unit = np.abs(g) == 1
    if not unit.any():                                  # no two neighbours: runs of one (table frames)
        return pfns.copy(), np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    # a new run starts at i when the gap before it is not a unit step, or when it is one but turns round
    # from the unit step before (which then belongs to a run of the other direction)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.logical_not(unit, out=new[1:])
    if n > 2:
        new[2:] |= unit[:-1] & (g[1:] != g[:-1])
    first = new.nonzero()[0]
    lens = np.empty_like(first)
    lens[:-1] = first[1:] - first[:-1]
    lens[-1] = n - first[-1]
    descs = np.zeros(len(first), dtype=np.int64)
    long = lens > 1
    descs[long] = g[first[long]] < 0
    return pfns[first], lens, descs


def expand_runs(starts: np.ndarray, lens: np.ndarray, descs: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """The pfns of runs, in order, as `dtype` (int32: the caller makes sure every pfn fits)."""
    total = int(lens.sum()) if len(lens) else 0
    if total == 0:
        return np.zeros(0, dtype=dtype)
    if len(starts) == 1:
        s, ln = int(starts[0]), int(lens[0])
        return np.arange(s, s - ln, -1, dtype=dtype) if descs[0] else np.arange(s, s + ln, dtype=dtype)
    first = np.cumsum(lens) - lens                      # where each run begins in the sequence
    if not descs.any():                                 # each pfn: its place plus its run's offset
        out: np.ndarray = np.arange(total, dtype=dtype)
        out += np.repeat((starts - first).astype(dtype), lens)
        return out
    offs = np.arange(total, dtype=np.int64) - np.repeat(first, lens)
    return (np.repeat(starts, lens) + offs * np.repeat(1 - 2 * descs, lens)).astype(dtype, copy=False)


class RunCursor:
    """The runs of one pfn sequence, cut up by page ranges without expanding them (a gather's batches)."""

    __slots__ = ("starts", "lens", "descs", "ends")

    def __init__(self, starts: np.ndarray, lens: np.ndarray, descs: np.ndarray) -> None:
        self.starts, self.lens, self.descs = starts, lens, descs
        self.ends = np.cumsum(lens)

    @classmethod
    def of(cls, pfns: np.ndarray) -> RunCursor:
        return cls(*runs_of(pfns))

    def take(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The runs of pages [a, b) of the sequence (a < b)."""
        ends = self.ends
        r0 = int(np.searchsorted(ends, a, "right"))
        r1 = int(np.searchsorted(ends, b - 1, "right"))
        st = self.starts[r0:r1 + 1].copy()
        ln = self.lens[r0:r1 + 1].copy()
        ds = self.descs[r0:r1 + 1]
        skip = a - int(ends[r0] - self.lens[r0])
        if skip:
            st[0] += -skip if ds[0] else skip
            ln[0] -= skip
        ln[-1] = b - int(ends[r1] - self.lens[r1]) - (skip if r0 == r1 else 0)
        return st, ln, ds


    def encode_chunks(self, a: int, b: int, size: int) -> tuple[list[array], list[int]]:
        """Pages [a, b) cut into consecutive chunks of `size` (the last one shorter): the arrays and counts
        of the PfnRuns holding them."""
        ends, starts, lens, descs = self.ends, self.starts, self.lens, self.descs
        r0 = int(np.searchsorted(ends, a, "right"))
        r1 = int(np.searchsorted(ends, b - 1, "right"))
        if r0 == r1 and size > 1:
            return self._chunks_of_run(r0, a, b, size)
        cuts = np.concatenate((np.arange(a + size, b, size), ends[r0:r1]))
        cuts.sort()
        if len(cuts) > 1:
            cuts = cuts[np.concatenate(([True], cuts[1:] != cuts[:-1]))]
        ps = np.concatenate(([a], cuts))
        pe = np.append(cuts, b)
        r = np.searchsorted(ends, ps, "right")
        off = ps - (ends[r] - lens[r])
        d = descs[r]
        st = starts[r] + np.where(d == 1, -off, off)
        ln = pe - ps
        out = np.empty(2 * len(ps), dtype=np.int32)
        out[0::2] = st
        out[1::2] = -((ln << 1) | d)
        keep = np.ones(len(out), dtype=bool)
        keep[1::2] = ln > 1
        out = out[keep]
        owner = np.repeat((ps - a) // size, 1 + (ln > 1))
        nchunks = -(-(b - a) // size)
        bounds = np.searchsorted(owner, np.arange(nchunks + 1)).tolist()
        big = array("i", out.tobytes())
        counts = [size] * nchunks
        counts[-1] = b - a - (nchunks - 1) * size
        return list(map(big.__getitem__, map(slice, bounds[:-1], bounds[1:]))), counts

    def _chunks_of_run(self, r: int, a: int, b: int, size: int) -> tuple[list[array], list[int]]:
        """encode_chunks() of pages [a, b) of run r alone (size > 1): each chunk is its first pfn and
        its length marker, the last one's marker left out when it holds one page."""
        d = int(self.descs[r])
        step = -1 if d else 1
        first = int(self.starts[r]) + step * (a - int(self.ends[r] - self.lens[r]))
        nchunks = -(-(b - a) // size)
        last = b - a - (nchunks - 1) * size
        out = np.empty((nchunks, 2), dtype=np.int32)
        out[:, 0] = np.arange(first, first + step * size * nchunks, step * size)
        out[:, 1] = -((size << 1) | d)
        out[-1, 1] = -((last << 1) | d)
        big = array("i", out.tobytes())
        if last == 1:
            del big[-1:]
        ends = list(range(2, 2 * nchunks + 1, 2))
        ends[-1] = len(big)
        counts = [size] * nchunks
        counts[-1] = last
        return list(map(big.__getitem__, map(slice, range(0, 2 * nchunks, 2), ends))), counts


def run_gaps(starts: np.ndarray, lens: np.ndarray, descs: np.ndarray) -> np.ndarray | None:
    """Where the pfns of runs do not go up by one (the indices i with pfns[i + 1] != pfns[i] + 1), from
    the runs alone; None when some run goes down."""
    if (descs[lens > 1] != 0).any():
        return None
    ends = np.cumsum(lens)
    return ends[:-1][starts[1:] != starts[:-1] + lens[:-1]] - 1


def rising_breaks(starts: np.ndarray, lens: np.ndarray, descs: np.ndarray) -> np.ndarray:
    """Where the pfns of runs stop going up: the indices i > 0 of the runs that do not begin above the last
    pfn of run i - 1, that go down (more than one pfn, descending) or that follow one going down. None of
    them: every pfn is above the one before."""
    down = (descs != 0) & (lens > 1)
    brk = starts[1:] < starts[:-1] + lens[:-1]
    brk |= down[1:]
    brk |= down[:-1]
    return np.flatnonzero(brk) + 1


def run_cuts(starts: np.ndarray, lens: np.ndarray, descs: np.ndarray,
             piece: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The runs of consecutive stretches of at most `piece` pfns of runs, in order (bounded host memory
    for their pfns)."""
    cur = RunCursor(starts, lens, descs)
    total = int(cur.ends[-1]) if len(lens) else 0
    for a in range(0, total, piece):
        yield cur.take(a, min(total, a + piece))


def run_pieces(starts: np.ndarray, lens: np.ndarray, descs: np.ndarray, piece: int = 1 << 18,
               with_gaps: bool = False, dtype: type = np.int64):
    """The pfns of runs, in order, as numpy arrays (of `dtype`) of at most about `piece` pfns (bounded
    host memory); `with_gaps`: each with its run_gaps(), as (pfns, gaps)."""
    for runs in run_cuts(starts, lens, descs, piece):
        yield (expand_runs(*runs, dtype), run_gaps(*runs)) if with_gaps else expand_runs(*runs, dtype)
