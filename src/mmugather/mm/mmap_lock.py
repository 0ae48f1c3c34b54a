"""The entry of an mm system call up to its mmap_lock (include/linux/mmap_lock.h: mmap_read_lock(),
mmap_write_lock(); `mm->mmap_sem` before v5.8)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mmugather.kernel.locking import MIGHT_SLEEP


def syscall_mmap_lock(syscall_ns: int, lock_op: Any, call_ns: int = 0) -> Iterator[Any]:
    """What every mm syscall of the model does first, used with `yield from` (no frame of its own for the
    engine): the syscall entry (`syscall_ns`), might_sleep() in down_read()/down_write(), the lock
    (`lock_op`: DownRead/DownWrite of mm->mmap_sem), then the call's own fixed cost once the lock is held
    (`call_ns`, a calibrated costs.*_call; 0 by default, and then nothing is spent)."""
    yield syscall_ns
    yield MIGHT_SLEEP
    yield lock_op
    if call_ns:
        yield call_ns
