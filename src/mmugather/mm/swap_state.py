"""mm/swap_state.c: releasing the pages a gather batched."""
from __future__ import annotations

import numpy as np

from mmugather.mm.memory.bulk import may_bulk, release_steps
from mmugather.mm.pfn_runs import PfnRuns

PAGEVEC_SIZE = 14


def free_pages_and_swap_cache(kernel, c, pages):
    """free_pages_and_swap_cache(), mm/swap_state.c (v2.6.39 and v3.0): drop one reference on each page,
    PAGEVEC_SIZE at a time through release_pages(); a page whose last reference goes is freed. `pages` is a
    list, a PfnRuns or a numpy array; on the fast path, the chunks that nothing can interleave with go in
    one pass (mm/memory/bulk.py)."""
    release_pages = kernel.alloc.release_pages
    cost = kernel.costs.page_free
    arr = None
    if not isinstance(pages, list):
        arr = pages.to_array() if isinstance(pages, PfnRuns) else np.asarray(pages, dtype=np.int64)
    n = len(pages)
    i = 0
    while i < n:
        if n - i > PAGEVEC_SIZE and may_bulk(kernel, c):
            if arr is None:
                arr = np.array(pages, dtype=np.int64)
            done = release_steps(kernel, c, arr, i, PAGEVEC_SIZE)
            if done:
                i += done
                yield cost * done
                continue
        chunk = pages[i:i + PAGEVEC_SIZE] if arr is None else arr[i:i + PAGEVEC_SIZE].tolist()
        release_pages(c, chunk)
        i += len(chunk)
        yield cost * len(chunk)
