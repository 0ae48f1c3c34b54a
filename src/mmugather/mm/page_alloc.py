"""Physical frames (struct page) and the page allocator, after mm/page_alloc.c.

Frames live in flat arrays indexed by pfn (refcount, mapcount, kind), not as an object per page, so that a
large resident address space costs a few bytes of host memory per simulated page. A freed frame is
poisoned (kind FREE): any later use of it through a stale translation is a use after free.
"""
from __future__ import annotations

from array import array

# Frame kinds. FREE doubles as the poison marker.
FREE, ANON, FILE, PGTABLE, BATCH = range(5)
KIND_NAMES = ("free", "anon", "file", "page-table", "gather-batch")

GFP_KERNEL = "GFP_KERNEL"   # may sleep, never fails in this model
GFP_NOWAIT = "GFP_NOWAIT"   # atomic; fails with probability fail_nowait


class PageAlloc:
    """The buddy allocator's observable contract: hand out free frames, take them back, count them."""

    def __init__(self, rng, fail_nowait: float, on_free, on_free_many) -> None:
        if not 0.0 <= fail_nowait <= 1.0:
            raise ValueError("fail_nowait must be a probability in [0, 1]")
        self.refcount = array("i")
        self.mapcount = array("i")
        self.kind = array("b")
        self.free_list = array("i")
        self.nr_used = [0] * len(KIND_NAMES)
        self.rng = rng
        self.fail_nowait = fail_nowait
        self.on_free = on_free
        self.on_free_many = on_free_many
        self.nowait_attempts = 0
        self.nowait_failures = 0

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
            pfn = len(self.refcount)
            self.refcount.append(1)
            self.mapcount.append(0)
            self.kind.append(kind)
        self.nr_used[kind] += 1
        return pfn

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
        first = len(self.refcount)
        self.refcount.extend(array("i", [1]) * rest)
        self.mapcount.extend(array("i", bytes(4 * rest)))
        self.kind.extend(array("b", [kind]) * rest)
        self.nr_used[kind] += n
        return pfns + list(range(first, first + rest)) if pfns else range(first, first + rest)

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
        refcount = self.refcount
        kind = self.kind
        nr_used = self.nr_used
        free_list = self.free_list
        freed = []
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
            free_list.append(pfn)
            freed.append((pfn, k))
        if freed:
            self.on_free_many(cpu, freed)

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
