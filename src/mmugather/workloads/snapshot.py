"""Snapshots of real processes' address spaces, and scenarios that tear them down.

A snapshot is a directory: `maps` and `smaps` (verbatim copies of /proc/PID/maps and /proc/PID/smaps; the
only required files, so copies taken by hand on any Linux box work), `meta.json` ({"pid", "comm",
"threads", "kernel", "captured_by"}) and `present` (the pages /proc/PID/pagemap showed present, as runs
per VMA). `capture` writes one from a live process, `load_snapshot` reads one strictly (any inconsistency
is an InputError "FILE:LINE: what is wrong"), `snapshot_to_scenario` turns one into a scenario dict.

The `present` file: lines starting with '#' are comments; every other line is `START-END RUN...` naming a
VMA of `maps` by its hex range, each RUN `FIRST+COUNT` of 4 KiB pages counted from the VMA start, in
increasing order and not touching or overlapping.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmugather.errors import InputError, read_input
from mmugather.workloads.scenario import MAX_CPUS, PAGE

# Mappings without struct pages: the x86 vvar pages are PFN maps (vmf_insert_pfn(), VmFlags "pf"),
# [vsyscall] lies outside the mm (gate area); exit_mmap frees nothing of theirs.
NO_STRUCT_PAGE = frozenset({"[vsyscall]", "[vvar]", "[vvar_vclock]"})
# Special mappings of normal pages the kernel keeps a reference to: vdso_fault() (arch/x86/entry/vdso/vma.c)
# and xol_fault() (kernel/events/uprobes.c) map them with get_page(); exit_mmap unmaps them and its put_page
# leaves them allocated (the vdso image's own pages; the xol page until uprobe_clear_state()).
KERNEL_HELD = frozenset({"[vdso]", "[uprobes]"})
VARIANTS = ("exit", "munmap-largest")
DATA = Path(__file__).resolve().parent.parent / "data" / "snapshots"
_HEADER = re.compile(r"^([0-9a-f]{1,16})-([0-9a-f]{1,16}) ([r-][w-][x-][ps]) ([0-9a-f]{1,16}) "
                     r"([0-9a-f]{2,}:[0-9a-f]{2,}) ([0-9]{1,20})(?: +(.*))?$")
_FIELD = re.compile(r"^([A-Za-z_]+):\s+([0-9]{1,20})( kB)?$")
_FLAGS = re.compile(r"^VmFlags:((?: [a-z0-9]{2})*) ?$")
_RUN = re.compile(r"^([0-9]{1,12})\+([0-9]{1,12})$")
_UNITLESS = frozenset({"THPeligible", "ProtectionKey"})
_STORED = {"Size": "size", "Rss": "rss", "Anonymous": "anonymous", "AnonHugePages": "anon_huge",
           "Shared_Clean": "shared_clean", "Shared_Dirty": "shared_dirty", "Private_Clean": "private_clean",
           "Private_Dirty": "private_dirty", "Swap": "swap"}
_PAGEMAP_CHUNK = 1 << 16


@dataclass(frozen=True)
class Vma:
    """One mapping. Sizes are bytes (smaps kB * 1024); `present` is None when no pagemap data was
    captured, else the present pages as (offset, length) byte ranges from `start`."""
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    rss: int
    anonymous: int
    anon_huge: int
    shared_clean: int
    shared_dirty: int
    private_clean: int
    private_dirty: int
    swap: int
    flags: tuple[str, ...]
    present: tuple[tuple[int, int], ...] | None

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def special(self) -> bool:
        """A mapping without struct pages ([vsyscall], [vvar], [vvar_vclock], any PFN map): nothing of it
        goes through the gather as a page."""
        return self.path in NO_STRUCT_PAGE or "pf" in self.flags

    @property
    def kernel_held(self) -> bool:
        """[vdso], [uprobes]: normal pages, mapped with an extra reference the kernel keeps."""
        return self.path in KERNEL_HELD

    @property
    def anon(self) -> bool:
        """No file behind it: no path, or a bracketed name such as [heap], [stack], [anon:NAME]."""
        return not self.path or self.path.startswith("[")


@dataclass(frozen=True)
class Snapshot:
    """A process's address space. pid, comm and kernel are None and threads 1 without meta.json."""
    source: Path
    vmas: tuple[Vma, ...]
    pid: int | None
    comm: str | None
    threads: int
    kernel: str | None

    @property
    def torn_down(self) -> tuple[Vma, ...]:
        """The VMAs exit_mmap tears down through the gather (all but those without struct pages)."""
        return tuple(v for v in self.vmas if not v.special)

    @property
    def rss_pages(self) -> int:
        """Resident 4 KiB pages of the torn-down VMAs (a THP counts as its 512 pages, as in smaps Rss)."""
        return sum(v.rss for v in self.torn_down) // PAGE

    @property
    def has_present(self) -> bool:
        return any(v.present is not None for v in self.vmas)


def _read(path: Path) -> str:
    try:
        return read_input(path)
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _header(line: str) -> tuple | None:
    """(start, end, perms, offset, dev, inode, path) of a maps line, None if it is not one."""
    m = _HEADER.match(line)
    if not m:
        return None
    return (int(m.group(1), 16), int(m.group(2), 16), m.group(3), int(m.group(4), 16), m.group(5),
            int(m.group(6)), m.group(7) or "")


def _check_range(where: str, h: tuple, prev_end: int) -> None:
    start, end, _, offset = h[:4]
    if start >= end:
        raise InputError(f"{where}: range {start:x}-{end:x} is empty or reversed")
    if start % PAGE or end % PAGE or offset % PAGE:
        raise InputError(f"{where}: range {start:x}-{end:x} or offset {offset:x} is not 4 KiB-aligned")
    if end > 1 << 64:
        raise InputError(f"{where}: end {end:x} is beyond the 64-bit address space")
    if start < prev_end:
        raise InputError(f"{where}: range {start:x}-{end:x} overlaps or precedes the previous VMA "
                         f"(ending at {prev_end:x})")


def _parse_maps(path: Path) -> list[tuple]:
    out, prev_end = [], 0
    for n, line in enumerate(_lines(_read(path)), 1):
        h = _header(line)
        if h is None:
            raise InputError(f"{path}:{n}: not a maps line (START-END PERMS OFFSET DEV INODE [PATH])")
        _check_range(f"{path}:{n}", h, prev_end)
        prev_end = h[1]
        out.append(h)
    if not out:
        raise InputError(f"{path}: no mappings")
    return out


def _parse_smaps(path: Path) -> list[tuple[tuple, int, dict, tuple]]:
    """(header, line number, {key: int value}, VmFlags) per entry, each entry checked on its own."""
    entries: list[list] = []  # header, line, {key: value}, VmFlags, [keys in order], {key: line}
    for n, line in enumerate(_lines(_read(path)), 1):
        h = _header(line)
        if h is not None:
            entries.append([h, n, {}, None, [], {}])
            continue
        if not entries:
            raise InputError(f"{path}:{n}: expected a mapping header line first")
        e = entries[-1]
        m = _FLAGS.match(line)
        if m:
            if e[3] is not None:
                raise InputError(f"{path}:{n}: VmFlags repeated")
            e[3] = tuple(m.group(1).split())
            e[4].append("VmFlags")
            continue
        m = _FIELD.match(line)
        if not m:
            raise InputError(f"{path}:{n}: not a 'Key: N kB' line")
        key, value, kb = m.group(1), int(m.group(2)), bool(m.group(3))
        if kb == (key in _UNITLESS):
            raise InputError(f"{path}:{n}: {key} " + ("takes no unit" if kb else "lacks its ' kB' unit"))
        if e[3] is not None:
            raise InputError(f"{path}:{n}: {key} after VmFlags, which ends an entry")
        if key in e[2]:
            raise InputError(f"{path}:{n}: {key} repeated")
        if key in _STORED and value % 4:
            raise InputError(f"{path}:{n}: {key} {value} kB is not a multiple of the 4 kB page")
        e[2][key], e[5][key] = value, n
        e[4].append(key)
    if not entries:
        raise InputError(f"{path}: no mappings")
    keys, prev_end = entries[0][4], 0
    for h, n, f, _flags, order, at in entries:
        _check_range(f"{path}:{n}", h, prev_end)
        prev_end = h[1]
        if order != keys:
            odd = [k for k in keys if k not in order] or [k for k in order if k not in keys] or ["order"]
            raise InputError(f"{path}:{n}: entry's keys differ from the first entry's ({', '.join(odd)} "
                             f"missing or extra): truncated?")
        for key in ("Size", "Rss"):
            if key not in f:
                raise InputError(f"{path}:{n}: entry lacks {key}")
        _check_sizes(path, h, f, at)
    return [(h, n, f, flags or ()) for h, n, f, flags, _, _ in entries]


def _check_sizes(path: Path, h: tuple, f: dict, at: dict) -> None:
    """Size matches the range and the parts fit: Rss <= Size, Anonymous <= Rss, AnonHugePages <=
    Anonymous, Shared_* + Private_* = Rss. `at` gives each key's line for the message."""
    size, rss = f["Size"], f["Rss"]
    if size * 1024 != h[1] - h[0]:
        raise InputError(f"{path}:{at['Size']}: Size {size} kB but the range {h[0]:x}-{h[1]:x} is "
                         f"{(h[1] - h[0]) >> 10} kB")
    if rss > size:
        raise InputError(f"{path}:{at['Rss']}: Rss {rss} kB exceeds Size {size} kB")
    anon, huge = f.get("Anonymous", 0), f.get("AnonHugePages", 0)
    if anon > rss:
        raise InputError(f"{path}:{at['Anonymous']}: Anonymous {anon} kB exceeds Rss {rss} kB")
    if huge > anon:
        raise InputError(f"{path}:{at['AnonHugePages']}: AnonHugePages {huge} kB exceeds Anonymous {anon} kB")
    parts = ("Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")
    if all(p in f for p in parts) and sum(f[p] for p in parts) != rss:
        raise InputError(f"{path}:{at['Rss']}: Shared_Clean + Shared_Dirty + Private_Clean + Private_Dirty = "
                         f"{sum(f[p] for p in parts)} kB, not Rss {rss} kB")


def _parse_present(path: Path, by_range: dict[tuple[int, int], int]) -> dict[int, tuple]:
    """{VMA index: ((offset, length), ...)} from a `present` file."""
    out: dict[int, tuple] = {}
    for n, line in enumerate(_lines(_read(path)), 1):
        if line.startswith("#"):
            continue
        head, *runs = line.split(" ")
        m = re.fullmatch(r"([0-9a-f]{1,16})-([0-9a-f]{1,16})", head)
        key = (int(m.group(1), 16), int(m.group(2), 16)) if m else None
        if key not in by_range:
            raise InputError(f"{path}:{n}: {head!r} is not the START-END range of a VMA in maps")
        k = by_range[key]
        if k in out:
            raise InputError(f"{path}:{n}: VMA {head} listed twice")
        pages, ranges, next_free = (key[1] - key[0]) // PAGE, [], 0
        for r in runs:
            rm = _RUN.match(r)
            if not rm:
                raise InputError(f"{path}:{n}: {r!r} is not a FIRST+COUNT run")
            first, count = int(rm.group(1)), int(rm.group(2))
            if count < 1 or first < next_free or first + count > pages:
                raise InputError(f"{path}:{n}: run {r} is empty, out of order, touches the previous run or "
                                 f"lies outside the VMA's {pages} pages")
            next_free = first + count + 1
            ranges.append((first * PAGE, count * PAGE))
        out[k] = tuple(ranges)
    return out


def _parse_meta(path: Path) -> dict:
    try:
        meta = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    types = {"pid": int, "comm": str, "threads": int, "kernel": str}
    for key, t in types.items():
        if key in meta and (not isinstance(meta[key], t) or isinstance(meta[key], bool)):
            raise InputError(f"{path}: '{key}' must be {'an integer' if t is int else 'a string'}")
    if meta.get("threads", 1) < 1:
        raise InputError(f"{path}: 'threads' must be at least 1")
    return meta


def load_snapshot(directory: str | Path) -> Snapshot:
    """Read and check a snapshot directory (maps and smaps required; meta.json and present optional)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: not a snapshot directory")
    maps = _parse_maps(d / "maps")
    smaps = _parse_smaps(d / "smaps")
    if len(smaps) != len(maps):
        raise InputError(f"{d / 'smaps'}: {len(smaps)} entries but maps has {len(maps)} mappings")
    for k, (m, (h, n, _, _)) in enumerate(zip(maps, smaps)):
        if m != h:
            raise InputError(f"{d / 'smaps'}:{n}: entry does not match line {k + 1} of maps")
    present = None
    if (d / "present").exists():
        present = _parse_present(d / "present", {(h[0], h[1]): k for k, h in enumerate(maps)})
    meta = _parse_meta(d / "meta.json") if (d / "meta.json").exists() else {}
    vmas = []
    for k, (h, _, f, flags) in enumerate(smaps):
        sizes = {attr: f.get(key, 0) * 1024 for key, attr in _STORED.items() if key != "Size"}
        vmas.append(Vma(*h, **sizes, flags=flags,  # type: ignore[misc]  # sizes: the _STORED fields only
                        present=None if present is None else present.get(k, ())))
    return Snapshot(d, tuple(vmas), meta.get("pid"), meta.get("comm"), meta.get("threads", 1),
                    meta.get("kernel"))


def _runs(bits: np.ndarray) -> list[tuple[int, int]]:
    """(first, count) runs of the nonzero entries of a 0/1 array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], bits.astype(np.int8), [0]))))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def _present_lines(pid: int, headers: list[tuple], rss_kb: list[int]) -> list[str] | None:
    """`present` lines from /proc/PID/pagemap (bit 63) for the VMAs smaps shows resident, never reading
    unmapped ranges or [vsyscall]; None if pagemap cannot be read."""
    lines = ["# VMA START-END, then runs FIRST+COUNT of present 4 KiB pages from the VMA start"]
    try:
        with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
            for h, rss in zip(headers, rss_kb):
                if not rss or h[6] == "[vsyscall]":
                    continue
                bits = []
                for first in range(h[0] // PAGE, h[1] // PAGE, _PAGEMAP_CHUNK):
                    count = min(_PAGEMAP_CHUNK, h[1] // PAGE - first)
                    raw = os.pread(f.fileno(), count * 8, first * 8)
                    if len(raw) != count * 8:
                        return None
                    bits.append(np.frombuffer(raw, dtype="<u8") >> np.uint64(63))
                runs = _runs(np.concatenate(bits))
                if runs:
                    lines.append(f"{h[0]:x}-{h[1]:x} " + " ".join(f"{a}+{c}" for a, c in runs))
    except OSError:
        return None
    return lines


def capture(pid: int, out_dir: str | Path) -> Snapshot:
    """Snapshot live process `pid` into `out_dir` (created if needed; maps, smaps, meta.json, and
    `present` when pagemap is readable) and return it as loaded back. maps and smaps are re-read until
    they agree (a process changing its mappings between the two reads)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1 or not Path(f"/proc/{pid}").is_dir():
        raise InputError(f"pid {pid}: no such process")
    proc, out = Path(f"/proc/{pid}"), Path(out_dir)
    for _ in range(10):
        try:
            maps, smaps = (proc / "maps").read_text(), (proc / "smaps").read_text()
            comm, threads = (proc / "comm").read_text().strip(), len(os.listdir(proc / "task"))
        except FileNotFoundError:
            raise InputError(f"pid {pid}: no such process (it exited)") from None
        except OSError as e:
            raise InputError(f"pid {pid}: cannot read {e.filename or proc}: {e.strerror or e}") from None
        headers = [h for h in map(_header, _lines(smaps)) if h is not None]
        if [_header(x) for x in _lines(maps)] == headers:
            break
    else:
        raise InputError(f"pid {pid}: maps and smaps kept disagreeing (mappings changing too fast)")
    if not headers:
        raise InputError(f"pid {pid}: no user address space (a kernel thread?)")
    rss_kb = [int(m.group(1)) for m in re.finditer(r"^Rss:\s+(\d+) kB$", smaps, re.M)]
    present = _present_lines(pid, headers, rss_kb)
    meta = {"pid": pid, "comm": comm, "threads": threads, "kernel": os.uname().release, "captured_by": "mmugather"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "maps").write_text(maps)
        (out / "smaps").write_text(smaps)
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if present is not None:
            (out / "present").write_text("\n".join(present) + "\n")
        elif (out / "present").exists():
            (out / "present").unlink()
    except OSError as e:
        raise InputError(f"{out}: cannot write snapshot: {e.strerror or e}") from None
    return load_snapshot(out)


def _populate(v: Vma) -> tuple[list[tuple[int, int]], bool]:
    """Exactly rss/4096 resident pages of `v` as (offset, length) ranges, and whether pagemap data
    was used as is. With pagemap data: its present pages, cut after the first rss pages if there are more
    (present zero-page mappings are not in Rss; the process also runs between the reads) or completed with
    the lowest absent pages if fewer. Without: one run from the VMA start."""
    want = v.rss // PAGE
    if v.present is None:
        return ([(0, want * PAGE)] if want else []), False
    bits = np.zeros(v.size // PAGE, dtype=bool)
    for off, length in v.present:
        bits[off // PAGE:(off + length) // PAGE] = True
    have = int(bits.sum())
    if have > want:
        bits[np.flatnonzero(bits)[want:]] = False
    elif have < want:
        bits[np.flatnonzero(~bits)[:want - have]] = True
    return [(a * PAGE, c * PAGE) for a, c in _runs(bits)], have == want


def _vma_specs(vmas: Sequence[Vma]) -> tuple[list[str], list[dict[str, Any]], dict[str, dict[str, Any]], int, int]:
    """snapshot_to_scenario's [[process.vma]] entries: (their names, the entries, the [[files]] entries by
    path, how many VMAs `_populate` placed exactly, how many THPs their AnonHugePages hold)."""
    names: list[str] = []
    specs: list[dict[str, Any]] = []
    files: dict[str, dict[str, Any]] = {}
    exact = huge = 0
    for k, v in enumerate(vmas):
        name = f"{k}:{v.path or 'anon'}"
        spec = {"name": name, "size": v.size, "start": v.start, "writable": v.perms[1] == "w"}
        if not v.anon or v.kernel_held:
            files.setdefault(v.path, {"name": v.path})
            spec.update(kind="file", file=v.path, offset=v.offset, shared=v.perms[3] == "s")
        ranges, used = _populate(v)
        exact += used
        huge += v.anon_huge // (512 * PAGE)
        if ranges:
            spec["populate"] = [list(r) for r in ranges]
        names.append(name)
        specs.append(spec)
    return names, specs, files, exact, huge


def snapshot_to_scenario(snap: Snapshot, variant: str = "exit", cpus: int | None = None) -> dict:
    """A scenario dict (for parse_scenario) tearing down `snap`'s address space.

    One process whose VMAs are the snapshot's at their real addresses, except those without struct pages
    ([vsyscall], [vvar], [vvar_vclock], PFN maps: see `Vma.special`). [vdso] and [uprobes] are torn down
    like any VMA, but their pages carry the kernel's own reference: modelled as a read-only private "file"
    of that name whose page cache holds it, so exit_mmap unmaps them (pages_unmapped) and its put_page
    after the flush does not free them. Other anonymous VMAs (no path or a [bracketed] name) are kind
    "anon"; the others "file", one [[files]] entry per distinct path, shared when the perms say 's'.
    `populate` holds exactly the snapshot's Rss, in 4 KiB pages (see `_populate`); AnonHugePages are
    populated as 512 ordinary pages each since the model has no THP. Threads: min(snap.threads, cpus or
    snap.threads), thread k on CPU k; thread 0 runs `exit`
    ("exit": exit_mmap of everything) or munmaps the VMA with the most Rss first ("munmap-largest"); the
    others churn (read) the first populated range of the smallest readable populated VMA left.
    """
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    if cpus is not None and not 1 <= cpus <= MAX_CPUS:
        raise InputError(f"cpus: expected 1..{MAX_CPUS}, got {cpus}")
    vmas = snap.torn_down
    if not vmas:
        raise InputError(f"{snap.source}: no VMA to tear down")
    names, specs, files, exact, huge = _vma_specs(vmas)
    target = max(range(len(vmas)), key=lambda k: (vmas[k].rss, vmas[k].size, -k))
    program = [{"op": "exit"}]
    if variant == "munmap-largest":
        program = [{"op": "munmap", "vma": names[target]}, {"op": "exit"}]
    churnable = [k for k, s in enumerate(specs) if "populate" in s and vmas[k].perms[0] == "r"
                 and not (variant == "munmap-largest" and k == target)]
    nthreads = min(snap.threads, cpus or min(snap.threads, MAX_CPUS)) if churnable else 1
    threads = [{"cpu": 0, "program": program}]
    if churnable:
        c = min(churnable, key=lambda k: (vmas[k].rss, k))
        off, length = specs[c]["populate"][0]
        threads += [{"cpu": i, "program": [{"op": "churn", "vma": names[c], "offset": off, "size": length}]}
                    for i in range(1, nthreads)]
    placed = ("pagemap present pages" + (f" (adjusted to Rss in {len(vmas) - exact} VMAs)" if exact < len(vmas)
                                         else "") if snap.has_present else "Rss pages from each VMA start")
    who = f"{snap.comm or snap.source.name}" + (f" (pid {snap.pid}, Linux {snap.kernel})" if snap.pid else "")
    desc = (f"snapshot of {who}: {len(vmas)} VMAs, {snap.rss_pages} resident 4 KiB pages placed from "
            f"{placed}; {huge} THPs populated as 512 pages each; {nthreads} threads; "
            + ("exit_mmap" if variant == "exit" else f"munmap of {names[target]} then exit"))
    return {"name": f"snapshot-{snap.comm or snap.source.name}-{variant}", "description": desc, "seed": 1,
            "machine": {"cpus": cpus or nthreads}, "files": list(files.values()),
            "process": [{"name": snap.comm or "app", "vma": specs, "thread": threads}]}


def builtin_snapshots() -> dict[str, Path]:
    """The snapshots shipped with mmugather: {name: directory}."""
    return {p.name: p for p in sorted(DATA.iterdir()) if (p / "maps").is_file()} if DATA.is_dir() else {}


def resolve_snapshot(name_or_dir: str | Path) -> Snapshot:
    """A built-in snapshot by name, else a snapshot directory."""
    builtin = builtin_snapshots()
    if str(name_or_dir) in builtin:
        return load_snapshot(builtin[str(name_or_dir)])
    if Path(name_or_dir).is_dir():
        return load_snapshot(name_or_dir)
    raise InputError(f"{name_or_dir}: neither a snapshot directory nor a built-in snapshot "
                     f"(built in: {', '.join(builtin) or 'none'})")
