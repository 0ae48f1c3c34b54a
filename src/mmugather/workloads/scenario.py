"""Scenario files: a machine, processes with VMAs and populated ranges, threads with programs.

The format is documented in docs/scenarios.md. Loading validates everything up front (pydantic, unknown
keys rejected) and turns any problem into one InputError line naming the file, the key and what was
expected.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator,
                      model_validator)
from pydantic.json_schema import JsonDict

from mmugather.errors import InputError, read_toml_input

PAGE = 4096
MAX_CPUS = 256
_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kib|m|mib|g|gib|t|tib|p|pages?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "p": PAGE, "page": PAGE, "pages": PAGE}


def _size(v):
    """A byte count: an integer, or a string like "64MiB", "2 GiB", "16 pages"."""
    if isinstance(v, bool):
        raise ValueError("expected a size, not a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        m = _SIZE.match(v)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ValueError(f"expected a size such as 4096, \"64MiB\" or \"16 pages\", got {v!r}")


_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0},
                          {"type": "string", "pattern": r"^\s*\d+\s*(" + "|".join(
                              "".join(f"[{c}{c.upper()}]" for c in u) for u in _UNITS) + r")\s*$"}],
                "unit": "bytes"}
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_SCHEMA)]
NS: JsonDict = {"unit": "ns"}      # json_schema_extra of a duration: docs and the JSON Schema show the unit


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Machine(Strict):
    """The simulated machine (`[machine]`)."""
    cpus: int = Field(4, ge=1, le=MAX_CPUS, description=(
        "simulated CPUs (`compare --cpus N` and a sweep's `cpus` override it: a thread or fork pinned to CPU c "
        "then runs on CPU c mod N, time-shared by the simulated scheduler)"))
    preempt: Literal["none", "voluntary", "full"] = Field(
        "voluntary", description="preemption model: CONFIG_PREEMPT_NONE / _VOLUNTARY / CONFIG_PREEMPT")
    policy: str = Field("3.0", description="built-in policy `run` and `explore` use when no `--policy` is given")
    fail_nowait: float = Field(0.0, ge=0.0, le=1.0,
                               description="probability that a GFP_NOWAIT (gather batch) allocation fails")
    latency_task: bool = Field(True, description="a latency-sensitive kernel thread woken periodically on every CPU")
    fault_around_pages: int = Field(0, ge=0, le=512, description=(
        "policy 6.18 only: a read fault of a file page also maps the cached pages around it, read-only "
        "(do_fault_around(), 3.15+: the kernel's fault_around_bytes / 4 KiB, 16 by default there; a power of "
        "two). 0 or 1: off, the faulting page alone"))
    softlockup_ns: int | None = Field(None, gt=0, json_schema_extra=NS, description=(
        "the soft-lockup watchdog's threshold, scaled (kernel/watchdog.c: 2 * watchdog_thresh, 20 s): a CPU that "
        "runs kernel code this long without passing a point where it could schedule is reported "
        "(`soft-lockup`); off when unset"))
    kvm_preempted: list[int] = Field(default_factory=list, description=(
        "arch x86-kvm only: the vCPUs the host keeps descheduled while runnable (kvm_sched_out() marks them "
        "preempted); kvm_flush_tlb_multi() defers their flush to the host instead of sending an IPI. A halted "
        "idle vCPU is not preempted. `--cpus N` folds them modulo N"))

    @model_validator(mode="after")
    def _preempted_cpus(self):
        """kvm_preempted: the vCPUs the host keeps descheduled while runnable (arch x86-kvm reads it)."""
        bad = [c for c in self.kvm_preempted if not 0 <= c < self.cpus]
        if bad:
            raise ValueError(f"kvm_preempted: CPU {bad[0]} but the machine has {self.cpus} CPUs")
        if len(set(self.kvm_preempted)) != len(self.kvm_preempted):
            raise ValueError("kvm_preempted: a CPU is listed twice")
        if self.fault_around_pages & (self.fault_around_pages - 1):
            raise ValueError(f"fault_around_pages: expected a power of two (or 0), got {self.fault_around_pages}")
        return self

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from mmugather.policies import POLICIES
        if v not in POLICIES:
            raise ValueError(f"unknown policy '{v}' (expected one of: {', '.join(POLICIES)})")
        return v


class FileSpec(Strict):
    """A file VMAs can map (`[[files]]`)."""
    name: str = Field(min_length=1, description="how VMAs, `truncate`, `fsync` and `revoke` refer to it")
    device: bool = Field(False, description=(
        "a device file (a driver's character device): no page cache; `kind = \"pfnmap\"` VMAs map the driver's "
        "buffer with remap_pfn_range(), and `revoke` frees it"))
    cached: Size = Field(0, ge=0, description=(
        "bytes from the file's start already in the page cache when the run starts (read before it, as a "
        "benchmark's warm-up leaves them); page-aligned"))
    pmd_folios_from: Size | None = Field(None, ge=0, description=(
        "policy 6.18 only: the cached pages from this file offset (2 MiB-aligned) on are held in PMD-sized "
        "(2 MiB) folios, as ext4's readahead leaves a file written in order (docs/host.md), so a suitably "
        "aligned mapping maps each by one PMD (do_set_pmd()); default: every page is a folio of its own"))

    @model_validator(mode="after")
    def _cached_pages(self):
        if self.cached % PAGE:
            raise ValueError(f"cached: {self.cached} is not a multiple of the page size")
        if self.cached and self.device:
            raise ValueError("cached: a device file has no page cache")
        if self.pmd_folios_from is not None:
            if self.pmd_folios_from % (2 << 20):
                raise ValueError(f"pmd_folios_from: {self.pmd_folios_from} is not a multiple of 2 MiB")
            if self.pmd_folios_from + (2 << 20) > self.cached:
                raise ValueError(f"pmd_folios_from: no whole 2 MiB of the {self.cached} cached bytes lies at or "
                                 f"above {self.pmd_folios_from}")
        return self


class VmaSpec(Strict):
    """A VMA (`[[process.vma]]`, or the `vma` table of an `mmap` op)."""
    name: str = Field(min_length=1, description="how operations refer to it (unique per process)")
    size: Size = Field(gt=0, description="page-aligned: `4096`, `\"64MiB\"`, `\"2 GiB\"`, `\"16 pages\"`")
    start: int | None = Field(None, description="page-aligned address (default: placed top-down below "
                                                     "0x7f0000000000)", json_schema_extra={"unit": "bytes"})
    kind: Literal["anon", "file", "pfnmap"] = Field("anon", description=(
        "anonymous memory, a file mapping, or a PFN map of a device file's driver buffer (remap_pfn_range() "
        "at mmap: VM_PFNMAP, special PTEs, always mapped whole; policy 6.18 only)"))
    file: str | None = Field(None, description="for `kind = \"file\"` or `\"pfnmap\"`: a `[[files]]` name")
    offset: Size = Field(0, description="file offset, page-aligned")
    shared: bool = Field(False, description="MAP_SHARED")
    writable: bool = Field(True, description="PROT_WRITE")
    populate: bool | list[tuple[Size, Size]] = Field(
        False, description="pages resident before the run starts: all (true) or a list of [offset, length]")

    @model_validator(mode="after")
    def _check(self):
        if self.size % PAGE:
            raise ValueError(f"size {self.size} is not a multiple of the 4096-byte page")
        if self.start is not None and (self.start % PAGE or self.start <= 0 or self.start + self.size > 1 << 47):
            raise ValueError(f"start {self.start:#x} must be page-aligned and inside the 47-bit user space")
        if self.kind in ("file", "pfnmap") and not self.file:
            raise ValueError(f"a {self.kind} VMA needs 'file' naming one of [[files]]")
        if self.kind == "pfnmap" and (not self.shared or self.populate is not False):
            raise ValueError("a pfnmap VMA is MAP_SHARED (shared = true) and mapped whole at mmap (no populate)")
        if self.kind == "anon" and self.file:
            raise ValueError("an anon VMA takes no 'file'")
        if self.offset % PAGE:
            raise ValueError("offset must be page-aligned")
        if isinstance(self.populate, list):
            for off, length in self.populate:
                if off % PAGE or length % PAGE or length <= 0 or off + length > self.size:
                    raise ValueError(f"populate range ({off}, {length}) must be page-aligned, non-empty and "
                                     f"inside the VMA")
        return self


class _Range(Strict):
    vma: str = Field(description="the VMA, by name")
    offset: Size = Field(0, description="start of the range in the VMA, page-aligned")
    size: Size | None = Field(None, description="length of the range, page-aligned and positive (default: to "
                                                "the end of the VMA as first mapped)")

    @model_validator(mode="after")
    def _aligned(self):
        if self.offset % PAGE or (self.size is not None and (self.size % PAGE or self.size <= 0)):
            raise ValueError("offset and size must be page-aligned and size positive")
        return self


class TouchOp(_Range):
    """Load or store every page of the range in order, `gap_ns` of user work between touches. A touch of
    an address with no VMA (or a write to a read-only one) is counted in `segv` and skipped."""
    op: Literal["touch"]
    write: bool = Field(True, description="store (true) or load")
    gap_ns: int = Field(0, ge=0, description="user work between touches", json_schema_extra=NS)


class ChurnOp(_Range):
    """Touch random pages of a range, gap_ns of user work between touches, until the process exits or no
    other thread has work left."""
    op: Literal["churn"]
    write: bool = Field(False, description="store (true) or load")
    gap_ns: int = Field(2000, ge=1, description="user work between touches", json_schema_extra=NS)


class MunmapOp(_Range):
    """munmap(2) of the range."""
    op: Literal["munmap"]


class MadviseOp(_Range):
    """madvise(2) of the range."""
    op: Literal["madvise"]
    advice: Literal["dontneed", "collapse"] = Field("dontneed", description=(
        "MADV_DONTNEED, or MADV_COLLAPSE (v6.1+) of a file VMA: each whole 2 MiB-aligned block in the range "
        "whose page cache is taken to hold a THP has its PTE table retracted (collapse_pte_mapped_thp(); "
        "later touches refault); -EINVAL before v6.1"))


class MmapOp(Strict):
    """mmap(2) of a new VMA; later operations can refer to it by name."""
    op: Literal["mmap"]
    vma: VmaSpec = Field(description="the VMA (a table with the keys of `[[process.vma]]`)")


class SleepOp(Strict):
    """nanosleep(2): the thread sleeps, its CPU runs other tasks."""
    op: Literal["sleep"]
    ns: int = Field(gt=0, description="how long", json_schema_extra=NS)


class ComputeOp(Strict):
    """User-mode work."""
    op: Literal["compute"]
    ns: int = Field(gt=0, description="how long", json_schema_extra=NS)


class ExitOp(Strict):
    """exit_group(2): the other threads leave at their next operation, the last one runs exit_mmap."""
    op: Literal["exit"]


class ExitThreadOp(Strict):
    """exit(2) of this thread only (pthread_exit): do_exit() -> exit_mm() drops its mm_users reference and
    its CPU goes on lazily with the mm loaded; the process goes on while other threads remain."""
    op: Literal["exit_thread"]


class ExecOp(Strict):
    """execve(): the process gets a new mm (the old one is torn down by its last user) and the new
    stack of `stack_pages` argument pages is moved down by `shift` (shift_arg_pages)."""
    op: Literal["exec"]
    stack_pages: int = Field(8, ge=1, le=4096, description="argument pages of the new stack")
    shift: Size = Field(1 << 20, gt=0, description="how far shift_arg_pages() moves the stack down")


class MprotectOp(_Range):
    """mprotect() of the range to `prot` ("r": read-only, "none"), or back to read-write ("rw")."""
    op: Literal["mprotect"]
    prot: Literal["r", "rw", "none"] = Field("r", description="PROT_READ, PROT_READ|PROT_WRITE or PROT_NONE")


class MremapOp(_Range):
    """mremap(MREMAP_MAYMOVE | MREMAP_FIXED) of the range onto the start of VMA `to` (same size)."""
    op: Literal["mremap"]
    to: str = Field(description="the destination VMA, by name")


class GupFastOp(_Range):
    """get_user_pages_fast() of the range (as O_DIRECT or a driver pinning a buffer): a lockless walk with
    IRQs off lasting at least `hold_ns` per PTE table; the pages are unpinned after `keep_ns`."""
    op: Literal["gup_fast"]
    write: bool = Field(False, description="FOLL_WRITE")
    hold_ns: int = Field(0, ge=0, description="least time IRQs stay off per PTE table walked", json_schema_extra=NS)
    keep_ns: int = Field(0, ge=0, description="how long the pages stay pinned", json_schema_extra=NS)


class TruncateOp(Strict):
    """truncate() of file `file` to `size` bytes: every process's mappings of the pages beyond go."""
    op: Literal["truncate"]
    file: str = Field(description="a `[[files]]` name")
    size: Size = Field(0, description="the new file size")


class FsyncOp(Strict):
    """fsync() of file `file`: write back its dirty page-cache pages (write_cache_pages(): each page's
    mappings are write-protected and cleaned through i_mmap, folio_mkclean(), then the page is written).
    From the first page it cleans on, the run checks `lost-write`."""
    op: Literal["fsync"]
    file: str = Field(description="a `[[files]]` name")


class RevokeOp(Strict):
    """A driver takes its buffer away from user space (a revoke ioctl, DRM buffer eviction):
    unmap_mapping_range() of device file `file` (every process's PFN maps of it), then the driver frees the
    buffer's frames."""
    op: Literal["revoke"]
    file: str = Field(description="a `[[files]]` name with `device = true`")


class HaltOp(Strict):
    """Stop the machine here: the end of a measurement (as a probe stops counting when its syscall
    returns). The run ends without tearing anything down."""
    op: Literal["halt"]


class ForkOp(Strict):
    """fork(): a child process with a copy-on-write copy of the address space, its one thread on `cpu`
    running `program` (ranges name the parent's VMAs, inherited), then exiting."""
    op: Literal["fork"]
    cpu: int = Field(ge=0, le=MAX_CPUS - 1, description="the CPU the child's thread is pinned to")
    program: list[Op] = Field(default_factory=list, description="the child's operations")


class LoopOp(Strict):
    """Run `body` `times` times, or until `duration_ns` of the thread's CPU time has passed since the loop
    began (checked before each iteration; a loop inside one stops at the outer deadline too), whichever
    comes first. Iteration i shifts every range of the body by i * `stride` bytes. With `count`, each
    iteration completed by the deadline adds one to metrics.loop_iterations (all threads together)."""
    op: Literal["loop"]
    body: list[Op] = Field(min_length=1, description="the operations repeated")
    times: int | None = Field(None, ge=1, description="iterations at most (give times, duration_ns or both)")
    duration_ns: int | None = Field(None, gt=0, description="thread CPU time the loop runs at most",
                                    json_schema_extra=NS)
    stride: Size = Field(0, ge=0, description="shift of every range of the body per iteration, page-aligned")
    count: bool = Field(False, description="count iterations in metrics.loop_iterations (and `ops_per_s`)")

    @model_validator(mode="after")
    def _bounded(self):
        if self.times is None and self.duration_ns is None:
            raise ValueError("a loop needs times, duration_ns or both")
        if self.stride % PAGE:
            raise ValueError(f"stride {self.stride} is not a multiple of the 4096-byte page")
        return self


Op = Annotated[TouchOp | ChurnOp | MunmapOp | MadviseOp | MmapOp | SleepOp | ComputeOp | ExitOp | ExitThreadOp | ExecOp
               | MprotectOp | MremapOp | GupFastOp | TruncateOp | FsyncOp | RevokeOp | HaltOp | LoopOp | ForkOp,
               Field(discriminator="op")]
LoopOp.model_rebuild()
ForkOp.model_rebuild()


def walk_ops(ops: list, shift: int = 0):
    """(op, largest shift of its ranges) for every op, loop bodies included (in program order)."""
    for op in ops:
        if isinstance(op, LoopOp):
            yield op, shift
            last = (op.times - 1) * op.stride if op.times is not None else 0
            if op.times is None and op.stride:
                last = 1 << 62                     # unbounded shift: any range falls outside its VMA
            yield from walk_ops(op.body, shift + last)
        elif isinstance(op, ForkOp):
            yield op, shift
            yield from walk_ops(op.program, shift)
        else:
            yield op, shift


class ThreadSpec(Strict):
    """A thread (`[[process.thread]]`). When its program ends or it runs `exit`, the whole process exits."""
    cpu: int = Field(ge=0, le=MAX_CPUS - 1, description="the CPU it is pinned to")
    program: list[Op] = Field(default_factory=list, description="operations run in order (the ops below)")


class ProcessSpec(Strict):
    """A process (`[[process]]`): its VMAs and its threads."""
    name: str = Field(min_length=1, description="shown in stories and traces")
    vma: list[VmaSpec] = Field(default_factory=list, description="`[[process.vma]]` tables")
    thread: list[ThreadSpec] = Field(min_length=1, description="`[[process.thread]]` tables")
    notifier_sleep_ns: int = Field(0, ge=0, json_schema_extra=NS, description=(
        "a secondary MMU (KVM, XPMEM) registered on the mm whose invalidate_range_start() sleeps this long"))

    @model_validator(mode="after")
    def _names(self):
        names = [v.name for v in self.vma]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"VMA names must be unique, repeated: {', '.join(sorted(dup))}")
        placed = sorted((v.start, v.start + v.size, v.name) for v in self.vma if v.start is not None)
        for (_, end, a), (start, _, b) in zip(placed, placed[1:]):
            if start < end:
                raise ValueError(f"VMA '{b}' at {start:#x} overlaps VMA '{a}' (which ends at {end:#x})")
        return self


class Scenario(Strict):
    """A scenario file: a machine, files, and processes with VMAs and threads."""
    name: str = Field("scenario", description="shown in reports")
    description: str = Field("", description="one line for `mmugather workloads` and reports")
    seed: int = Field(0, ge=0, description="seeds the run (`--seed` overrides)")
    machine: Machine = Field(Machine(), description="`[machine]`")
    files: list[FileSpec] = Field(default_factory=list, description="`[[files]]` tables")
    process: list[ProcessSpec] = Field(min_length=1, description="`[[process]]` tables")

    @model_validator(mode="after")
    def _refs(self):
        files = {f.name for f in self.files}
        devices = {f.name for f in self.files if f.device}
        for p in self.process:
            names = {v.name: v.size for v in p.vma}
            kinds: dict[str, str] = {v.name: v.kind for v in p.vma}
            for v in p.vma:
                if v.file and v.file not in files:
                    raise ValueError(f"process '{p.name}': VMA '{v.name}' names unknown file '{v.file}'")
                _check_device(p.name, v, devices)
            for t in p.thread:
                if t.cpu >= self.machine.cpus:
                    raise ValueError(f"process '{p.name}': thread on CPU {t.cpu} but the machine has "
                                     f"{self.machine.cpus} CPUs")
                for op, shift in walk_ops(t.program):
                    if isinstance(op, MmapOp):
                        names[op.vma.name] = op.vma.size
                        kinds[op.vma.name] = op.vma.kind
                        if op.vma.file and op.vma.file not in files:
                            raise ValueError(f"process '{p.name}': mmap names unknown file '{op.vma.file}'")
                        _check_device(p.name, op.vma, devices)
                    _check_kind(p.name, op, kinds, devices)
                    if isinstance(op, ForkOp) and op.cpu >= self.machine.cpus:
                        raise ValueError(f"process '{p.name}': fork onto CPU {op.cpu} but the machine has "
                                         f"{self.machine.cpus} CPUs")
                    if isinstance(op, (TruncateOp, FsyncOp)) and op.file not in files:
                        raise ValueError(f"process '{p.name}': {op.op} names unknown file '{op.file}'")
                    to = getattr(op, "to", None)
                    if to is not None and to not in names:
                        raise ValueError(f"process '{p.name}': mremap to unknown VMA '{to}'")
                    ref = getattr(op, "vma", None)
                    if isinstance(ref, str):
                        if ref not in names:
                            raise ValueError(f"process '{p.name}': {op.op} names unknown VMA '{ref}'")
                        size = names[ref]
                        if (op.offset + shift >= size or op.offset + shift + (op.size or 0) > size):
                            raise ValueError(f"process '{p.name}': {op.op} of VMA '{ref}' at offset "
                                             f"{op.offset + shift} size {op.size} lies outside its {size} bytes")
        return self


def _check_device(process: str, v: VmaSpec, devices: set[str]) -> None:
    """A pfnmap VMA maps a device file; a file VMA maps a file that is not one."""
    if v.kind == "pfnmap" and v.file not in devices:
        raise ValueError(f"process '{process}': pfnmap VMA '{v.name}' needs a [[files]] entry with device = true")
    if v.kind == "file" and v.file in devices:
        raise ValueError(f"process '{process}': file VMA '{v.name}' maps device file '{v.file}' (use kind = "
                         f"\"pfnmap\")")


# ops a pfnmap VMA takes (the others' kernel paths on special PTEs are not modelled)
_PFNMAP_OPS = (TouchOp, ChurnOp, MunmapOp, GupFastOp)


def _check_kind(process: str, op, kinds: dict[str, str], devices: set[str]) -> None:
    """An op fits the kind of VMA or file it names: MADV_COLLAPSE of file VMAs only (anonymous collapse,
    collapse_huge_page(), is not modelled); truncate and fsync of a regular file, revoke of a device file; a pfnmap
    VMA only touched, unmapped or walked by gup_fast, and no fork of a process holding one."""
    ref = getattr(op, "vma", None)
    kind = kinds.get(ref) if isinstance(ref, str) else None
    if isinstance(op, MadviseOp) and op.advice == "collapse" and kind != "file":
        raise ValueError(f"process '{process}': madvise collapse of VMA '{op.vma}': MADV_COLLAPSE is modelled "
                         f"for file VMAs only (not {kind})")
    if kind == "pfnmap" and not isinstance(op, _PFNMAP_OPS):
        raise ValueError(f"process '{process}': {op.op} of pfnmap VMA '{op.vma}' is not modelled")
    if isinstance(op, ForkOp) and "pfnmap" in kinds.values():
        raise ValueError(f"process '{process}': fork of a process with a pfnmap VMA is not modelled")
    if isinstance(op, (TruncateOp, FsyncOp)) and op.file in devices:
        raise ValueError(f"process '{process}': {op.op} of device file '{op.file}'")
    if isinstance(op, RevokeOp) and op.file not in devices:
        raise ValueError(f"process '{process}': revoke names '{op.file}', which is not a [[files]] entry with "
                         f"device = true")


_OP_TAGS = {"touch", "churn", "munmap", "madvise", "mmap", "sleep", "compute", "exit", "exit_thread", "exec",
            "mprotect", "mremap", "gup_fast", "truncate", "fsync", "revoke", "halt", "loop", "fork"}


def _where(loc: tuple) -> str:
    """A pydantic error location as a key path: process[0].thread[1].program[2].size."""
    out = ""
    for k, x in enumerate(loc):
        if isinstance(x, int):
            out += f"[{x}]"
        elif x in _OP_TAGS and k and isinstance(loc[k - 1], int):
            continue
        else:
            out += ("." if out else "") + x
    return out or "(top level)"


def parse_scenario(data: object, origin: str) -> Scenario:
    """Validate a scenario given as a dict (from TOML or built in); errors become one InputError line."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise InputError(f"{origin}: {_where(err['loc'])}: {msg}{more}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    p = Path(path)
    return parse_scenario(read_toml_input(p, "scenario"), str(p))


# Host memory a run needs, measured on this model (peak RSS of a run minus RSS before building it, exit of a
# populated VMA, every policy): 27-31 bytes per resident page of a densely populated VMA (tables included),
# 5.5 KB per PTE table of a VMA with one page per table. The estimate takes both with a margin.
PAGE_BYTES = 24
TABLE_BYTES = 5600
_TABLE_SPAN = 512 * PAGE


def _tables(nbytes: int) -> int:
    """PTE tables a run of `nbytes` can span (one more for a start inside a table)."""
    return -(-nbytes // _TABLE_SPAN) + 1


def _touched(ops: list, sizes: dict[str, int], out: dict[str, list[int]], mult: int, forks: list[int]) -> None:
    """Add to out[vma] the bytes each op may make resident, `mult` times (loops with a stride touch new
    pages each iteration; without one, the same); count forks (times their multiplicity) in forks[0]."""
    for op in ops:
        if isinstance(op, LoopOp):
            times = op.times if op.times is not None else 1 << 40
            _touched(op.body, sizes, out, mult * times if op.stride else mult, forks)
        elif isinstance(op, ForkOp):
            forks[0] += mult
            _touched(op.program, sizes, out, mult, forks)
        elif isinstance(op, MmapOp):
            sizes[op.vma.name] = op.vma.size
        elif isinstance(op, (TouchOp, ChurnOp, GupFastOp)) and op.vma in sizes:
            length = op.size if op.size is not None else sizes[op.vma] - op.offset
            out.setdefault(op.vma, []).append(length * mult)


def estimate_memory(scenario: Scenario) -> int:
    """Bytes of host memory a run of `scenario` may need at its peak, from the model's own costs per
    resident page and per PTE table: every populated page, every page a program may touch (capped at its
    VMA's size), and a copy of the tables per fork. Computed from the scenario alone, before building."""
    total = 0
    for p in scenario.process:
        sizes = {v.name: v.size for v in p.vma}
        resident = {v.name: ([v.size] if v.populate is True or v.kind == "pfnmap"     # (mapped whole at mmap)
                             else [n for _, n in v.populate] if v.populate else [])
                    for v in p.vma}
        forks = [0]
        for t in p.thread:
            _touched(t.program, sizes, resident, 1, forks)
        pages = tables = 0
        for name, runs in resident.items():
            nbytes = min(sizes[name], sum(runs))
            pages += nbytes // PAGE
            tables += min(_tables(sizes[name]), sum(_tables(n) for n in runs)) if runs else 0
        total += pages * PAGE_BYTES + tables * TABLE_BYTES * (1 + min(forks[0], 1 << 20))
    return total


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; for the messages about memory limits."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            return f"{n:,.1f} {unit}"
    return f"{n / 1024:,.1f} PiB"


def _fold_ops(ops: list, cpus: int) -> list:
    """`ops` with every fork's CPU taken modulo `cpus` (inside loops and forked programs too)."""
    out = []
    for op in ops:
        if isinstance(op, ForkOp):
            op = op.model_copy(update={"cpu": op.cpu % cpus, "program": _fold_ops(op.program, cpus)})
        elif isinstance(op, LoopOp):
            op = op.model_copy(update={"body": _fold_ops(op.body, cpus)})
        out.append(op)
    return out


def with_cpus(scenario: Scenario, cpus: int) -> Scenario:
    """`scenario` on a machine of `cpus` CPUs (the `--cpus N` override). A thread or fork pinned to CPU c
    runs on CPU c mod N, so a scenario written for more CPUs folds onto fewer: the threads that share a CPU
    are time-shared by the simulated scheduler (round robin on the time slice), as a kernel would run more
    runnable tasks than CPUs. A larger N leaves the pinning as it is and adds idle CPUs. The vCPUs of
    `kvm_preempted` fold the same way."""
    if not 1 <= cpus <= MAX_CPUS:
        raise InputError(f"--cpus: expected 1..{MAX_CPUS}, got {cpus}")
    procs = [p.model_copy(update={"thread": [t.model_copy(update={"cpu": t.cpu % cpus,
                                                                  "program": _fold_ops(t.program, cpus)})
                                             for t in p.thread]})
             for p in scenario.process]
    preempted = sorted({c % cpus for c in scenario.machine.kvm_preempted})
    machine = scenario.machine.model_copy(update={"cpus": cpus, "kvm_preempted": preempted})
    return scenario.model_copy(update={"machine": machine,
                                       "process": procs})
