"""Run-length encoded pfn sequences (mm/pfn_runs.py): RunCursor.encode_chunks(), the encodings of a 3.0
gather's new batches, equal those of PfnRuns filled one pfn at a time."""
import random

import numpy as np

from mmugather.mm.pfn_runs import PfnRuns, RunCursor, expand_runs, rising_breaks


def _appended(pfns: list[int]) -> bytes:
    runs = PfnRuns()
    for p in pfns:
        runs.append(p)
    return runs.tobytes()


def _check(starts: list[int], lens: list[int], descs: list[int], a: int, b: int, size: int) -> None:
    cur = RunCursor(*(np.array(x, dtype=np.int64) for x in (starts, lens, descs)))
    pfns = expand_runs(*cur.take(0, int(cur.ends[-1]))).tolist()
    encs, counts = cur.encode_chunks(a, b, size)
    chunks = [pfns[x:min(b, x + size)] for x in range(a, b, size)]
    assert counts == list(map(len, chunks))
    assert [e.tobytes() for e in encs] == list(map(_appended, chunks))


def test_encode_chunks_of_one_run_equal_the_pages_appended_one_at_a_time():
    """A range inside one run (a batch-sized cut of consecutive frames, ascending or descending): every
    chunk's encoding, the short last one's too (one page: no length marker), is what append() makes."""
    for desc in (0, 1):
        for a, b, size in ((0, 1020, 510), (3, 1020, 510), (5, 516, 510), (0, 1021, 510), (7, 8, 510),
                           (2, 900, 2), (1, 4, 2), (0, 1000, 1)):
            _check([10_000], [1024], [desc], a, b, size)


def test_encode_chunks_of_runs_far_apart_equal_the_pages_appended_one_at_a_time():
    """Random ranges over up to four runs whose pfns do not continue one another (else append() would
    join them), chunk sizes from one page up."""
    rng = random.Random(3)
    for _ in range(2000):
        n = rng.randint(1, 4)
        lens = [rng.choice([1, 2, 3, rng.randint(1, 3000)]) for _ in range(n)]
        starts = [20_000 * (i + 1) + rng.randint(0, 9000) for i in range(n)]
        descs = [rng.randint(0, 1) if ln > 1 else 0 for ln in lens]
        a = rng.randint(0, sum(lens) - 1)
        _check(starts, lens, descs, a, rng.randint(a + 1, sum(lens)), rng.choice([1, 2, 3, 7, 510, 5000]))


def test_expand_runs_as_int32_equals_the_pfns_one_run_at_a_time():
    """expand_runs() as int32 (a pass's release, while every pfn fits) and as int64: the pfns of each run
    in turn, ascending or descending, runs of one included."""
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 6)
        lens = [rng.choice([1, 2, rng.randint(1, 700)]) for _ in range(n)]
        starts = [rng.randint(700, 1 << 30) for _ in range(n)]
        descs = [rng.randint(0, 1) if ln > 1 else 0 for ln in lens]
        want = [p for s, ln, d in zip(starts, lens, descs) for p in (range(s, s - ln, -1) if d else range(s, s + ln))]
        runs = [np.array(x, dtype=np.int64) for x in (starts, lens, descs)]
        for dtype in (np.int32, np.int64):
            got = expand_runs(*runs, dtype)
            assert got.dtype == dtype and got.tolist() == want


def test_rising_breaks_cut_runs_where_their_pfns_stop_going_up():
    """rising_breaks(): a run begins a new stretch exactly when its pfns, or the run before's, go down, or
    its first pfn is not above the last pfn of the run before (judged on the pfns themselves); runs of one
    pfn flagged descending go up. Runs that touch, overlap or sit below one another included."""
    rng = random.Random(11)
    for _ in range(2000):
        n = rng.randint(1, 7)
        lens = [rng.choice([1, 1, 2, rng.randint(1, 50)]) for _ in range(n)]
        starts = [rng.randint(100, 400) for _ in range(n)]
        descs = [rng.randint(0, 1) for _ in range(n)]
        runs = [np.array(x, dtype=np.int64) for x in (starts, lens, descs)]
        pfns = [expand_runs(*(r[i:i + 1] for r in runs)).tolist() for i in range(n)]
        up = [len(p) == 1 or p[1] > p[0] for p in pfns]
        want = [i for i in range(1, n) if not (up[i - 1] and up[i] and pfns[i][0] > pfns[i - 1][-1])]
        assert rising_breaks(*runs).tolist() == want


def test_extend_run_encodes_as_extend_of_the_pfns():
    """extend_run() gives extend()'s encoding of the same pfns after any last entry: a plain pfn just below,
    just above (a run going down from it would join with append() but not with extend()), a run going up
    or down that it continues or not, short and long runs."""
    rng = random.Random(7)
    for _ in range(400):
        prefix = [rng.randrange(90, 110) for _ in range(rng.randrange(0, 4))]
        if rng.random() < 0.5 and prefix:
            prefix += list(range(prefix[-1] + 1, prefix[-1] + rng.randrange(2, 30)))
        start, n = rng.randrange(95, 140), rng.choice([0, 1, 2, 15, 16, 17, 40, 300])
        a, b = PfnRuns(), PfnRuns()
        for p in prefix:
            a.append(p)
            b.append(p)
        before = list(b.a)
        a.extend(np.arange(start, start + n, dtype=np.int64))
        b.extend_run(start, n)
        assert (a.tobytes(), len(a)) == (b.tobytes(), len(b)), (prefix, start, n)
        assert b.tolist() == prefix + list(range(start, start + n))
        if n >= 16 and before and start == prefix[-1] + 1 and (before[-1] >= 0 or not -before[-1] & 1):
            assert len(b.a) <= len(before) + 1, (prefix, start, n)   # joined to the last plain pfn or run up


def test_extend_runs_encodes_each_run_as_its_start_and_length():
    """extend_runs() of a few runs or many (a loop below _SMALL runs, arrays above): each run its start,
    then -(len << 1 | descending) when longer than one; the pfns come back in order."""
    rng = random.Random(11)
    for nruns in (2, 3, 15, 16, 17, 40):
        starts = np.array([rng.randrange(1000, 10**6) for _ in range(nruns)], dtype=np.int64)
        lens = np.array([rng.choice([1, 1, 2, 7, 300]) for _ in range(nruns)], dtype=np.int64)
        descs = np.array([rng.randrange(2) if ln > 1 else 0 for ln in lens], dtype=np.int64)
        r = PfnRuns()
        r.append(5)                                     # (not joined: the first run starts far from it)
        r.extend_runs(starts, lens, descs)
        want = [5]
        for s, ln, d in zip(starts.tolist(), lens.tolist(), descs.tolist()):
            want += [s] + ([-((ln << 1) | d)] if ln > 1 else [])
        assert r.a.tolist() == want and len(r) == 1 + int(lens.sum())
        assert r.tolist() == [5] + expand_runs(starts, lens, descs).tolist()
