"""Thin ctypes wrappers for the memory-management syscalls the host probes issue.

Each wrapper calls glibc through `ctypes.CDLL(None, use_errno=True)` and raises OSError carrying errno
on failure; addresses are plain ints. Only memory mapped by these wrappers should be passed to them.
"""
from __future__ import annotations

import ctypes
import os

PAGE = 4096
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_POPULATE = 0x01, 0x02, 0x10, 0x20, 0x8000
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 4, 14, 15
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mremap = _libc.mremap
_mremap.restype = ctypes.c_void_p
_mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
_int_calls = {}
for _name, _args in {"munmap": [ctypes.c_void_p, ctypes.c_size_t],
                     "madvise": [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int],
                     "mprotect": [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]}.items():
    _f = getattr(_libc, _name)
    _f.restype, _f.argtypes = ctypes.c_int, _args
    _int_calls[_name] = _f


def _fail(name: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{name}: {os.strerror(err)}")


def _check(name: str, rc: int) -> None:
    if rc != 0:
        raise _fail(name)


def mmap(length: int, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_PRIVATE | MAP_ANONYMOUS,
         addr: int = 0, fd: int = -1, offset: int = 0) -> int:
    """mmap(2); returns the address."""
    p = _mmap(addr or None, length, prot, flags, fd, offset)
    if p is None or p == _MAP_FAILED:
        raise _fail("mmap")
    return p


def munmap(addr: int, length: int) -> None:
    """munmap(2)."""
    _check("munmap", _int_calls["munmap"](addr, length))


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2)."""
    _check("madvise", _int_calls["madvise"](addr, length, advice))


def mprotect(addr: int, length: int, prot: int) -> None:
    """mprotect(2)."""
    _check("mprotect", _int_calls["mprotect"](addr, length, prot))


def mremap(addr: int, old_size: int, new_size: int, flags: int = MREMAP_MAYMOVE, new_addr: int = 0) -> int:
    """mremap(2); `new_addr` is used only with MREMAP_FIXED. Returns the new address."""
    p = _mremap(addr, old_size, new_size, flags, new_addr or None)
    if p is None or p == _MAP_FAILED:
        raise _fail("mremap")
    return p


def pin(cpu: int) -> None:
    """Pin the calling thread (not the whole process) to one CPU."""
    os.sched_setaffinity(0, {cpu})


def touch(addr: int, length: int, stride: int = PAGE) -> None:
    """Write one byte every `stride` bytes of [addr, addr+length): one C call when every page is touched."""
    if stride == PAGE:
        ctypes.memset(addr, 1, length)
        return
    for off in range(0, length, stride):
        ctypes.memset(addr + off, 1, 1)
