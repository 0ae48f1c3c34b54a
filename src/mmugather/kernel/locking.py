"""Locks as the scheduler sees them (kernel/spinlock.c, kernel/rwsem.c, kernel/mutex.c).

Kernel paths do not take locks by calling these objects: they yield a request (`SpinLock(lock)`,
`DownWrite(sem)`, ...) and the engine in machine/engine.py grants it, spins or sleeps the task, and raises or
lowers `preempt_count`, so that contention, hold times and preemption are all accounted in one place.
"""
from __future__ import annotations

from collections import deque


class Spinlock:
    """spinlock_t: a FIFO ticket lock. Holding it disables preemption; waiters spin on their CPU."""

    __slots__ = ("name", "owner", "waiters", "acquired_at", "stat")

    def __init__(self, name: str, stat: str | None = None) -> None:
        self.name = name
        self.owner = None            # the CPU holding it
        self.waiters: deque | tuple = ()   # a deque while contended (one lock per PTE table: keep it small)
        self.acquired_at = 0
        self.stat = stat             # metrics bucket for hold times ("pte" for split PTE locks)


class RwSemaphore:
    """struct rw_semaphore (mmap_sem): sleeping reader-writer lock, FIFO, readers share."""

    __slots__ = ("name", "readers", "writer", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers = 0
        self.writer = None
        self.waiters: deque = deque()   # (task, is_writer)


class Mutex:
    """struct mutex: a sleeping lock with one owner."""

    __slots__ = ("name", "owner", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner = None
        self.waiters: deque = deque()


def spin_needbreak(lock: Spinlock, preempt: bool) -> bool:
    """spin_needbreak(), include/linux/sched.h (v2.6.39 and until 6.x): `#ifdef CONFIG_PREEMPT return
    spin_is_contended(lock); #else return 0;` -- `preempt`: the kernel has CONFIG_PREEMPT (the engine's
    `full` model). A ticket lock is contended when someone waits for it."""
    return preempt and bool(lock.waiters)


# Requests a kernel path yields to the engine. Integers yielded are plain costs in ns.
class Request:
    __slots__ = ()


class SpinLock(Request):
    """spin_lock(): preempt_disable(), then take the lock or spin until it is handed over."""
    __slots__ = ("lock",)

    def __init__(self, lock: Spinlock) -> None:
        self.lock = lock


class SpinUnlock(Request):
    """spin_unlock(): hand the lock to the next waiter, then preempt_enable() (a preemption point)."""
    __slots__ = ("lock",)

    def __init__(self, lock: Spinlock) -> None:
        self.lock = lock


class DownRead(Request):
    __slots__ = ("sem",)

    def __init__(self, sem: RwSemaphore) -> None:
        self.sem = sem


class DownWrite(DownRead):
    __slots__ = ()


class UpRead(DownRead):
    __slots__ = ()


class UpWrite(DownRead):
    __slots__ = ()


class DowngradeWrite(DownRead):
    """downgrade_write(): the writer becomes a reader and lets waiting readers in."""
    __slots__ = ()


class MutexLock(Request):
    __slots__ = ("mutex",)

    def __init__(self, mutex: Mutex) -> None:
        self.mutex = mutex


class MutexUnlock(MutexLock):
    __slots__ = ()


class _Marker(Request):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PREEMPT_DISABLE = _Marker("preempt_disable")
PREEMPT_ENABLE = _Marker("preempt_enable")      # a preemption point under CONFIG_PREEMPT
COND_RESCHED = _Marker("cond_resched")          # a preemption point under every model
MIGHT_SLEEP = _Marker("might_sleep")            # checked: sleeping here while atomic is a bug
LOCAL_IRQ_DISABLE = _Marker("local_irq_disable")
LOCAL_IRQ_ENABLE = _Marker("local_irq_enable")    # pending IPIs are taken here
