"""mm/swap_state.c: releasing the pages a gather batched."""
from __future__ import annotations

from mmugather.mm.protocols import Path


def free_pages_and_swap_cache(kernel, c, pages) -> Path:
    """free_pages_and_swap_cache(), mm/swap_state.c: drop one reference on each page, the kernel's
    PAGEVEC_SIZE at a time (v2.6.39/v3.0: release_pages() of 14 pages; 6.x: folios_put_refs() of each full
    folio_batch of 31); a page whose last reference goes is freed. The release
    backend (mm/protocols.py ReleaseBackend) may release a run of chunks at once, and then owns `pages`
    (a list, or a batch's run-length encoded pages)."""
    release_pages = kernel.alloc.release_pages
    size = kernel.PAGEVEC_SIZE
    cost = kernel.costs.page_free
    run = kernel.release_backend.pages_run(kernel, c, pages, size)
    n = len(pages)
    i = 0
    while i < n:
        done = run.release(i) if run is not None else 0
        if done:
            i += done
            yield cost * done
            continue
        chunk = pages[i:i + size] if run is None else run.chunk(i, size)
        release_pages(c, chunk)
        i += len(chunk)
        yield cost * len(chunk)
