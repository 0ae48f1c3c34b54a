"""Built-in workloads: scenarios written as data, listed by `mmugather workloads`."""
from __future__ import annotations

from pathlib import Path

from mmugather.errors import InputError
from mmugather.workloads.scenario import Scenario, load_scenario, parse_scenario

DEFAULT = "default"


def _default() -> dict:
    """Eight threads on eight CPUs. Thread 0 munmaps 512 MiB and MADV_DONTNEEDs another 512 MiB, all
    touched, while the others keep touching their own memory (and, before that, a little of the regions
    being torn down, so their TLBs hold translations that must be shot down); then the process exits with
    1 GiB and the working sets still resident."""
    vmas = [
        {"name": "unmap", "size": "512MiB", "populate": True},
        {"name": "dontneed", "size": "512MiB", "populate": True},
        {"name": "keep", "size": "1GiB", "populate": True},
    ] + [{"name": f"ws{i}", "size": "4MiB", "populate": True} for i in range(1, 8)]
    warm = [{"op": "touch", "vma": "unmap", "size": "128KiB", "write": False},
            {"op": "touch", "vma": "dontneed", "size": "128KiB", "write": False}]
    threads = [{"cpu": 0, "program": warm + [
        {"op": "munmap", "vma": "unmap"},
        {"op": "madvise", "vma": "dontneed", "advice": "dontneed"},
        {"op": "exit"},
    ]}]
    for i in range(1, 8):
        target = f"ws{i}" if i <= 4 else "keep"
        threads.append({"cpu": i, "program": warm + [
            {"op": "churn", "vma": target, "write": i <= 4, "gap_ns": 2000}]})
    return {"name": DEFAULT, "description": "8 threads: munmap 512 MiB + MADV_DONTNEED 512 MiB while 7 "
                                            "threads touch memory, then exit with 1 GiB resident",
            "seed": 1, "machine": {"cpus": 8, "preempt": "voluntary"},
            "process": [{"name": "app", "vma": vmas, "thread": threads}]}


def _small() -> dict:
    """A few MiB on four CPUs: fast enough to run hundreds of seeds, with threads racing the teardown."""
    return {"name": "small", "description": "4 threads: munmap 8 MiB and MADV_DONTNEED 8 MiB while 3 "
                                           "threads touch memory (some of it the range torn down), then exit",
            "seed": 1, "machine": {"cpus": 4, "preempt": "voluntary"},
            "process": [{"name": "app",
                         "vma": [{"name": "a", "size": "8MiB", "populate": True},
                                 {"name": "b", "size": "8MiB", "populate": True},
                                 {"name": "w", "size": "2MiB", "populate": True}],
                         "thread": [
                             {"cpu": 0, "program": [{"op": "touch", "vma": "a", "size": "64KiB"},
                                                    {"op": "munmap", "vma": "a"},
                                                    {"op": "madvise", "vma": "b"},
                                                    {"op": "exit"}]},
                             {"cpu": 1, "program": [{"op": "touch", "vma": "a", "size": "256KiB", "gap_ns": 500},
                                                    {"op": "churn", "vma": "w", "write": True, "gap_ns": 700}]},
                             {"cpu": 2, "program": [{"op": "churn", "vma": "b", "write": True, "gap_ns": 900}]},
                             {"cpu": 3, "program": [{"op": "churn", "vma": "w", "gap_ns": 1100}]},
                         ]}]}


def _exit(gib: int) -> dict:
    return {"name": f"exit-{gib}g", "description": f"exit_mmap of {gib} GiB resident, one thread, 2 CPUs",
            "seed": 1, "machine": {"cpus": 2, "preempt": "voluntary", "latency_task": False},
            "process": [{"name": "app", "vma": [{"name": "a", "size": f"{gib}GiB", "populate": True}],
                         "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}


def _munmap(gib: int) -> dict:
    return {"name": f"munmap-{gib}g", "description": f"munmap of {gib} GiB resident, one thread, 2 CPUs",
            "seed": 1, "machine": {"cpus": 2, "preempt": "voluntary", "latency_task": False},
            "process": [{"name": "app", "vma": [{"name": "a", "size": f"{gib}GiB", "populate": True}],
                         "thread": [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}]}]}


def _execve() -> dict:
    return {"name": "execve", "description": "a 2-thread process with 64 MiB resident calls execve(): the old "
                                            "mm is torn down (fullmm) and the new stack moved (shift_arg_pages)",
            "seed": 1, "machine": {"cpus": 2, "preempt": "voluntary"},
            "process": [{"name": "app", "vma": [{"name": "heap", "size": "64MiB", "populate": True}],
                         "thread": [{"cpu": 0, "program": [{"op": "compute", "ns": 50000},
                                                           {"op": "exec", "stack_pages": 32, "shift": "1MiB"},
                                                           {"op": "exit"}]},
                                    {"cpu": 1, "program": [{"op": "churn", "vma": "heap", "gap_ns": 1000}]}]}]}


BUILTIN = {
    DEFAULT: _default,
    "small": _small,
    "exit-1g": lambda: _exit(1),
    "exit-8g": lambda: _exit(8),
    "munmap-1g": lambda: _munmap(1),
    "execve": _execve,
}


def builtin_workloads() -> dict[str, Scenario]:
    return {name: parse_scenario(make(), f"built-in workload '{name}'") for name, make in BUILTIN.items()}


# Parametric workload families, "PREFIX:..." -> a function of the full name returning a scenario dict
PARAMETRIC: dict = {}


def is_builtin(name: str) -> bool:
    """A built-in workload name, fixed or parametric (OP:N[:B], wis:TEST:MODE:N, ...)."""
    return name in BUILTIN or name.split(":", 1)[0] in PARAMETRIC


def resolve_workload(spec: str | None) -> Scenario:
    """A built-in workload by name (fixed or parametric), or a scenario TOML file by path."""
    name = spec or DEFAULT
    if name in BUILTIN:
        return parse_scenario(BUILTIN[name](), f"built-in workload '{name}'")
    if name.split(":", 1)[0] in PARAMETRIC:
        return parse_scenario(PARAMETRIC[name.split(":", 1)[0]](name), f"built-in workload '{name}'")
    if Path(name).exists() or name.endswith(".toml"):
        return load_scenario(name)
    raise InputError(f"--workload: '{name}' is neither a built-in workload ({', '.join(BUILTIN)}) nor a file")


PROBE_OPS = ("munmap", "dontneed", "mprotect", "mremap", "munmap-untouched", "munmap-sparse")
SECONDS = ("running", "blocked", "alone")
MAX_PROBE_PAGES = 4_000_000


def probe_workload(name: str) -> dict:
    """`OP:N[:B]`: the host probe's pattern (mmugather.host.probe) as a scenario. Thread A on CPU 0 maps
    an anonymous region of N pages below the process's existing mappings (a library and thread B's
    stack, placed top-down by get_unmapped_area()), all touched (one page per 2 MiB for munmap-sparse,
    so N page tables; none for munmap-untouched), then issues OP on it; the machine halts when the call
    returns, as the probe stops counting. Thread B (same process, CPU 1) has touched its stack and is
    `running` user code, `blocked` (CPU 1 idle, lazy TLB) or absent (`alone`)."""
    parts = name.split(":")
    if len(parts) not in (2, 3) or parts[0] not in PROBE_OPS:
        raise InputError(f"workload '{name}': expected OP:N[:B] with OP one of {', '.join(PROBE_OPS)}")
    op, n = parts[0], parts[1]
    second = parts[2] if len(parts) == 3 else "running"
    if not n.isdigit() or not 1 <= int(n) <= MAX_PROBE_PAGES:
        raise InputError(f"workload '{name}': N must be a page count from 1 to {MAX_PROBE_PAGES}")
    if second not in SECONDS:
        raise InputError(f"workload '{name}': B must be one of {', '.join(SECONDS)}")
    pages = int(n)
    stride = 512 if op == "munmap-sparse" else 1
    size = pages * stride * 4096
    region = {"name": "region", "size": size}
    if op == "munmap-sparse":
        region["populate"] = [[k * (2 << 20), 4096] for k in range(pages)]
    elif op != "munmap-untouched":
        region["populate"] = True
    vmas = [{"name": "lib", "size": "2MiB", "populate": [[0, 4096]]},
            {"name": "stack-b", "size": 8 * 1024 * 1024 + 4096}, region]
    call = {"munmap": {"op": "munmap", "vma": "region"}, "dontneed": {"op": "madvise", "vma": "region"},
            "mprotect": {"op": "mprotect", "vma": "region", "prot": "r"},
            "mremap": {"op": "mremap", "vma": "region", "to": "dest"}}[op if op in ("dontneed", "mprotect", "mremap")
                                                                    else "munmap"]
    if op == "mremap":
        vmas.append({"name": "dest", "size": size, "writable": False})
    threads = [{"cpu": 0, "program": [{"op": "compute", "ns": 100_000}, call, {"op": "halt"}]}]
    if second != "alone":
        park = {"op": "compute", "ns": 10**10} if second == "running" else {"op": "sleep", "ns": 10**10}
        threads.append({"cpu": 1, "program": [{"op": "touch", "vma": "stack-b", "offset": 8 << 20, "size": 4096},
                                              park]})
    return {"name": name, "description": f"{op} of {pages} touched pages while thread B is {second} "
                                          f"(the host probe's pattern; halts when the call returns)",
            "seed": 1, "machine": {"cpus": 2, "preempt": "voluntary", "latency_task": False},
            "process": [{"name": "probe", "vma": vmas, "thread": threads}]}


PARAMETRIC.update({op: probe_workload for op in PROBE_OPS})

from mmugather.workloads.wis import wis_workload  # noqa: E402  (will-it-scale's tlb_flush tests)

PARAMETRIC["wis"] = wis_workload


def snapshot_workload(name: str) -> dict:
    """`snapshot:NAME_OR_DIR[:VARIANT]`: a /proc snapshot (workloads/snapshot.py) as a scenario, so sweeps
    and `--workload` take snapshots too; VARIANT is exit (the default) or munmap-largest."""
    from mmugather.workloads.snapshot import VARIANTS, resolve_snapshot, snapshot_to_scenario
    parts = name.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise InputError(f"workload '{name}': expected snapshot:NAME_OR_DIR[:VARIANT]")
    variant = parts[2] if len(parts) == 3 else "exit"
    if variant not in VARIANTS:
        raise InputError(f"workload '{name}': VARIANT must be one of {', '.join(VARIANTS)}")
    return snapshot_to_scenario(resolve_snapshot(parts[1]), variant)


PARAMETRIC["snapshot"] = snapshot_workload

# name pattern -> what it is, for `mmugather workloads`
FAMILIES = {
    "OP:N[:B]": f"the host probe's pattern (kernel-check): OP one of {', '.join(PROBE_OPS)}; N pages; B one "
                f"of {', '.join(SECONDS)} (default running), e.g. munmap:9000 or dontneed:1:blocked",
    "wis:TEST:MODE:N[:MS]": "will-it-scale tlb_flush1/2/3 in threads or processes mode, N tasks, MS ms "
                            "of simulated time, e.g. wis:tlb_flush2:threads:2",
    "snapshot:NAME[:VARIANT]": "a /proc snapshot (shipped name or directory), exit or munmap-largest",
}
