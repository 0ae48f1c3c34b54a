"""mm/swap_state.c: releasing the pages a gather batched."""
from __future__ import annotations

PAGEVEC_SIZE = 14


def free_pages_and_swap_cache(kernel, c, pages: list[int]):
    """free_pages_and_swap_cache(), mm/swap_state.c (v2.6.39 and v3.0): drop one reference on each page,
    PAGEVEC_SIZE at a time through release_pages(); a page whose last reference goes is freed."""
    release_pages = kernel.alloc.release_pages
    cost = kernel.costs.page_free
    for i in range(0, len(pages), PAGEVEC_SIZE):
        chunk = pages[i:i + PAGEVEC_SIZE]
        release_pages(c, chunk)
        yield cost * len(chunk)
