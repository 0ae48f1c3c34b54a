"""Sweeps: one simulation per point of a parameter grid, run in parallel, streamed to a resumable file.

The sweep file format, the executors and the resume rules are documented in docs/sweeps.md. A point's id
is a hash of its parameters (and of the contents of its scenario file), so a rerun with `resume=True` skips
exactly the points already in DIR/results.jsonl, whichever order they finished in, and reruns the points
whose scenario file changed. One sweep at a time writes to a directory (an exclusive lock on DIR/.lock).
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
from collections import Counter
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from mmugather.arch import arch_names
from mmugather.errors import InputError, read_toml_input
from mmugather.policies import POLICIES
from mmugather.pool import process_pool
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import BUILTIN, is_builtin, resolve_workload
from mmugather.workloads.scenario import MAX_CPUS, Scenario, with_cpus

if TYPE_CHECKING:
    from rich.progress import Progress

RESULTS = "results.jsonl"
GRID = "sweep.json"
LOCK = ".lock"
MAX_POINTS = 1_000_000          # a grid is a list in memory and a line per point on disk: split bigger ones
MAX_CHUNK = 64
DASK_CONNECT_TIMEOUT = "5s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _unique(values: list) -> list:
    repeated = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise ValueError(f"repeated value(s): {', '.join(repeated)}")
    return values


def _all_known(values: list[str], known: list[str], what: str) -> list[str]:
    """`values` when each is one of `known`; else a ValueError naming the first that is not (a `what`)."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"unknown {what} '{unknown[0]}' (expected one of: {', '.join(known)})")
    return values


_SEEDS_SCHEMA = {"anyOf": [{"type": "array", "items": {"type": "integer"}, "minItems": 1},
                           {"type": "object", "properties": {"from": {"type": "integer"}, "to": {"type": "integer"}},
                            "required": ["from", "to"], "additionalProperties": False}]}


class Grid(_Strict):
    """`[grid]`: each key lists the values a parameter takes; the points are every combination."""
    policies: list[str] = Field(min_length=1, description="built-in policy names (`mmugather policies`)")
    workloads: list[str] = Field(min_length=1, description=(
        "built-in or parametric workload names (`munmap:20000:blocked`, `wis:tlb_flush2:threads:2`, "
        "`snapshot:postgres`; `mmugather workloads`) or scenario files, relative to the sweep file"))
    cpus: list[int] = Field(min_length=1, description=(
        f"simulated CPU counts, 1..{MAX_CPUS}; below a workload's own count its threads fold onto them "
        "(a thread pinned to CPU c runs on CPU c mod N, time-shared)"))
    preempt: list[Literal["none", "voluntary", "full"]] = Field(min_length=1, description="preemption models")
    fail_nowait: list[float] = Field(min_length=1, description=(
        "probabilities (0..1) that a GFP_NOWAIT (gather batch) allocation fails"))
    seeds: Annotated[list[int], WithJsonSchema(_SEEDS_SCHEMA)] = Field(min_length=1, description=(
        "one run per seed: a list, or `{from = A, to = B}` for A..B, both included"))
    arch: list[str] = Field(["x86"], min_length=1, description=(
        "architectures (x86, x86-kvm, x86-invlpgb, arm64, ppc64, ppc64-radix); pairs whose kernel did not support the "
        "arch are left out"))

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_range(cls, v):
        """{from = A, to = B} is the seeds A..B, both included."""
        if not isinstance(v, dict):
            return v
        if set(v) != {"from", "to"} or not all(type(x) is int for x in v.values()):
            raise ValueError("expected a list of seeds or a table {from = FIRST, to = LAST} of integers")
        if v["to"] < v["from"]:
            raise ValueError(f"'to' ({v['to']}) is below 'from' ({v['from']})")
        if v["to"] - v["from"] + 1 > MAX_POINTS:
            raise ValueError(f"{v['to'] - v['from'] + 1:,} seeds: a grid holds at most {MAX_POINTS:,} points "
                             f"(split it into several sweeps)")
        return list(range(v["from"], v["to"] + 1))

    @field_validator("policies", "cpus", "preempt", "fail_nowait", "seeds", "arch")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        return _unique(v)

    @field_validator("workloads")
    @classmethod
    def _same_file_once(cls, v: list[str]) -> list[str]:
        """`race.toml` and `./race.toml` are one workload: file paths are normalised before the check."""
        return _unique([w if is_builtin(w) else os.path.normpath(w) for w in v])

    @field_validator("seeds")
    @classmethod
    def _seeds_not_negative(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s < 0]
        if bad:
            raise ValueError(f"expected seeds >= 0, got {bad[0]}")
        return v

    @model_validator(mode="after")
    def _not_too_big(self):
        n = self.size()
        if n > MAX_POINTS:
            raise ValueError(f"the grid has {n:,} points; at most {MAX_POINTS:,} (split it into several sweeps)")
        return self

    def size(self) -> int:
        """The number of points, computed without building them."""
        pairs = sum(1 for a in self.arch for p in self.policies if a in POLICIES[p].arches)
        return (pairs * len(self.workloads) * len(self.preempt) * len(self.cpus) * len(self.fail_nowait)
                * len(self.seeds))

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, v: list[str]) -> list[str]:
        return _all_known(v, list(POLICIES), "policy")

    @field_validator("arch")
    @classmethod
    def _known_arches(cls, v: list[str]) -> list[str]:
        return _all_known(v, arch_names(), "arch")

    @model_validator(mode="after")
    def _arch_policies(self):
        for arch in self.arch:
            if not any(arch in POLICIES[p].arches for p in self.policies):
                raise ValueError(f"no policy of the grid runs on {arch} (see `mmugather policies`)")
        return self

    @field_validator("cpus")
    @classmethod
    def _cpu_range(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 1 <= c <= MAX_CPUS]
        if bad:
            raise ValueError(f"expected CPU counts in 1..{MAX_CPUS}, got {bad[0]}")
        return v

    @field_validator("fail_nowait")
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0.0 <= p <= 1.0]
        if bad:
            raise ValueError(f"expected probabilities in [0, 1], got {bad[0]}")
        return v


class SweepFile(_Strict):
    """A sweep file: one table, `[grid]`."""
    grid: Grid = Field(description="`[grid]`")


@dataclass(frozen=True)
class Point:
    """One simulation of a sweep; `index` is its place in the grid's fixed order."""
    index: int
    arch: str
    workload: str
    policy: str
    preempt: str
    cpus: int
    fail_nowait: float
    seed: int
    inputs: str = ""         # a hash of the workload's scenario file ("" for built-in workloads)

    def params(self) -> dict:
        p = asdict(self)
        del p["index"], p["inputs"]
        return p

    @property
    def id(self) -> str:
        """A stable id: the same parameters (and scenario file contents) give the same id in every run and
        on every machine."""
        key = self.params() | ({"inputs": self.inputs} if self.inputs else {})
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def grid_points(grid: Grid, inputs: dict[str, str] | None = None) -> list[Point]:
    """The cartesian product, in the order arch, workloads, policies, preempt, cpus, fail_nowait, seeds
    (seeds vary fastest), without the (arch, policy) pairs that kernel version did not support. `inputs`
    maps a file workload to the hash of its contents (`input_hashes`)."""
    inputs = inputs or {}
    product = itertools.product(grid.arch, grid.workloads, grid.policies, grid.preempt, grid.cpus,
                                grid.fail_nowait, grid.seeds)
    return [Point(k, *values, inputs=inputs.get(values[1], ""))
            for k, values in enumerate(v for v in product if v[0] in POLICIES[v[2]].arches)]


def input_hashes(scenarios: dict[str, Scenario]) -> dict[str, str]:
    """workload -> a hash of the scenario it names, for the workloads given as files (built-ins are code:
    their ids name only their parameters)."""
    return {name: hashlib.sha256(sc.model_dump_json().encode()).hexdigest()[:16]
            for name, sc in scenarios.items() if not is_builtin(name)}


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required key is missing",
             "too_short": "expected at least one value", "model_type": "expected a table"}


def _where(loc: tuple) -> str:
    return "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "(top level)"


def load_sweep(path: str | os.PathLike[str]) -> tuple[Grid, dict[str, Scenario]]:
    """Read and validate a sweep file; also load each workload (a built-in name, or a scenario file path
    relative to the sweep file; a CPU count below a workload's folds its threads: see with_cpus). Problems are
    one InputError line."""
    p = Path(path)
    data = read_toml_input(p, "sweep file")
    try:
        grid = SweepFile.model_validate(data).grid
    except ValidationError as e:
        err = e.errors()[0]
        msg = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise InputError(f"{p}: {_where(err['loc'])}: {msg}{more}") from None
    scenarios = {}
    for name in grid.workloads:
        file = p.parent / name
        if not is_builtin(name) and not file.exists():
            raise InputError(f"{p}: grid.workloads: '{name}' is neither a built-in workload "
                             f"({', '.join(BUILTIN)}) nor a file")
        scenarios[name] = resolve_workload(name if is_builtin(name) else str(file))
    return grid, scenarios


def flatten_metrics(metrics: dict) -> dict:
    """The numeric metrics of a run, flat: {"max", "p99"} summaries become pte_lock_hold_ns.max and so on,
    violations becomes their count, and ipis_by_cpu is dropped (ipis_sent is the total)."""
    flat = {}
    for key, value in metrics.items():
        if key == "ipis_by_cpu":
            continue
        if key == "violations":
            flat[key] = len(value)
        elif isinstance(value, dict):
            flat.update({f"{key}.{stat}": v for stat, v in value.items()})
        else:
            flat[key] = value
    return flat


def run_point(point: Point, scenario: Scenario | None = None) -> dict:
    """Simulate one point (its workload resolved by name unless given); the row written for it."""
    scenario = with_cpus(scenario or resolve_workload(point.workload), point.cpus)   # CPU c runs on c mod N
    sim = Simulation(scenario, POLICIES[point.policy], cpus=point.cpus, preempt=point.preempt,
                     fail_nowait=point.fail_nowait, seed=point.seed, arch=point.arch)
    return {"id": point.id, **point.params(), "metrics": flatten_metrics(sim.run())}


def run_chunk(points: list[Point], scenarios: dict[str, Scenario]) -> list[dict]:
    """One task: several points, so the per-task cost of the executor is paid once for all of them."""
    return [run_point(p, scenarios[p.workload]) for p in points]


def _chunks(points: list[Point], slots: int, size: int | None) -> list[list[Point]]:
    """About four chunks per worker (so a slow chunk does not leave the others idle), at most MAX_CHUNK."""
    size = size or max(1, min(MAX_CHUNK, math.ceil(len(points) / (4 * slots))))
    return [points[k:k + size] for k in range(0, len(points), size)]


@contextmanager
def _local_executor(workers: int | None):
    """Worker processes on this machine (pool.py). On any exit but a normal one (Ctrl-C, an error) the
    workers are killed at once: a chunk in flight is lost (and rerun by --resume), the rows already
    written are kept."""
    n = workers or os.cpu_count() or 1
    with process_pool(n) as pool:
        def run(tasks):
            for future in as_completed([pool.submit(run_chunk, *task) for task in tasks]):
                yield future.result()
        yield n, run


@contextmanager
def _dask_executor(address: str | None, workers: int | None):
    """A Dask cluster: a local one started for the sweep, or the scheduler at `address`."""
    from distributed import Client, LocalCluster
    from distributed import as_completed as dask_completed
    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=DASK_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(f"--executor dask={address}: cannot reach the Dask scheduler "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    def run(tasks):
        for future in dask_completed([client.submit(run_chunk, *task, pure=False) for task in tasks]):
            yield future.result()
    try:
        yield max(1, sum(client.nthreads().values())), run
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _executor(spec: str, workers: int | None):
    if workers is not None and workers < 1:
        raise InputError(f"--workers: expected a positive number, got {workers}")
    if spec == "local":
        return _local_executor(workers)
    if spec == "dask":
        return _dask_executor(None, workers)
    if spec.startswith("dask=") and spec[5:]:
        return _dask_executor(spec[5:], workers)
    raise InputError(f"--executor: expected local, dask or dask=ADDRESS, got '{spec}'")


def read_rows(results: Path) -> tuple[list[dict], int]:
    """The complete rows of a results file and their length in bytes. A last line without its newline is
    what a run killed mid-write leaves (or one still being written): it is not a row."""
    if not results.exists():
        return [], 0
    data = results.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    rows = []
    for n, line in enumerate(complete.splitlines(), 1):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{results}:{n}: not a JSON row; the file is damaged") from None
        if not isinstance(row, dict):
            raise InputError(f"{results}:{n}: a row must be a JSON object, got {type(row).__name__}; "
                             f"the file is damaged")
        if not isinstance(row.get("id"), str):
            raise InputError(f"{results}:{n}: the row has no string 'id'; the file is damaged")
        rows.append(row)
    return rows, len(complete)


def _read_grid(d: Path) -> tuple[Grid, dict[str, str]]:
    """The grid and input hashes recorded in DIR/sweep.json (a bare grid: a sweep.json from before the
    input hashes)."""
    try:
        doc = json.loads((d / GRID).read_text())
    except OSError:
        raise InputError(f"{d}: no sweep here ({GRID} is missing)") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{d / GRID}: not JSON; the file is damaged") from None
    try:
        if isinstance(doc, dict) and "grid" in doc:
            return Grid.model_validate(doc["grid"]), dict(doc.get("inputs") or {})
        return Grid.model_validate(doc), {}
    except (ValidationError, TypeError, ValueError):
        raise InputError(f"{d / GRID}: not a sweep grid; the file is damaged") from None


def load_results(out_dir: str | os.PathLike[str]) -> list[dict]:
    """The rows of the last sweep run in `out_dir`, in the grid's point order (rows of points no longer in
    its grid are left out)."""
    d = Path(out_dir)
    grid, inputs = _read_grid(d)
    by_id = {row["id"]: row for row in read_rows(d / RESULTS)[0]}
    return [by_id[p.id] for p in grid_points(grid, inputs) if p.id in by_id]


@contextmanager
def locked(out: Path):
    """Create OUT and hold an exclusive lock on OUT/.lock while the block runs: a second sweep into the same
    directory is refused rather than interleaving rows with the first."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InputError(f"--out: cannot create {out / LOCK}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"--out: another sweep is writing to {out} (it holds {out / LOCK}); wait for it to "
                             f"finish or choose another directory") from None
        yield
    finally:
        os.close(fd)


def run_sweep(sweep_file: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, executor: str = "local",
              workers: int | None = None, resume: bool = False, chunk: int | None = None, progress: bool = True,
              max_memory: int | None = None) -> dict:
    """Run every point of `sweep_file` not yet in OUT_DIR/results.jsonl, appending each chunk's rows (one
    JSON object a line, sorted keys) and syncing them to disk as the chunk finishes. Without `resume`,
    an existing results file is an error; so is another sweep running into OUT_DIR. With `max_memory`
    (bytes), a grid whose largest point, times the workers, is estimated to need more is refused before
    anything runs. Returns {"points", "skipped", "ran"}."""
    if chunk is not None and chunk < 1:
        raise InputError(f"--chunk: expected a positive number, got {chunk}")
    pool = _executor(executor, workers)
    grid, scenarios = load_sweep(sweep_file)
    if max_memory is not None:
        _check_memory(scenarios, grid, workers or os.cpu_count() or 1, max_memory)
    out = Path(out_dir)
    results = out / RESULTS
    inputs = input_hashes(scenarios)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a directory")
    if results.exists() and not resume:
        raise InputError(f"{results} exists: pass --resume to continue it, or choose another directory")
    with pool as (slots, run), locked(out):
        if results.exists() and not resume:           # written by a sweep that finished meanwhile
            raise InputError(f"{results} exists: pass --resume to continue it, or choose another directory")
        (out / GRID).write_text(json.dumps({"grid": grid.model_dump(mode="json"), "inputs": inputs}))
        finished, size = read_rows(results)
        if results.exists():
            os.truncate(results, size)                    # drop a torn last line: appends start a fresh line
        done = {row["id"] for row in finished}
        points = grid_points(grid, inputs)
        todo = [p for p in points if p.id not in done]
        _run_points(run, todo, scenarios, slots, chunk, len(points), results, progress)
    return {"points": len(points), "skipped": len(points) - len(todo), "ran": len(todo)}


def _check_memory(scenarios: dict[str, Scenario], grid: Grid, workers: int, limit: int) -> None:
    from mmugather.workloads.scenario import estimate_memory
    from mmugather.workloads.scenario import human_bytes as _gib
    name, need = max(((n, estimate_memory(sc)) for n, sc in scenarios.items()), key=lambda x: x[1])
    at_once = max(1, min(workers, grid.size()))
    if need * at_once > limit:
        raise InputError(f"--max-memory: workload '{name}' needs about {_gib(need)} per point, "
                         f"{_gib(need * at_once)} with {at_once} workers at once; the limit is {_gib(limit)} "
                         f"(raise --max-memory or lower --workers)")


def _bar(progress: bool) -> Progress:
    """The sweep's progress bar on stderr (Rich imported here, not with the module: `compare` reaches this
    module through api.py and draws no such bar)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} points/s" if task.speed else "- points/s")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("points"), Rate(),
               TextColumn("ETA"), TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not progress)


def _run_points(run, todo: list[Point], scenarios, slots: int, chunk: int | None, total: int, results: Path,
                progress: bool) -> None:
    tasks = [(c, {p.workload: scenarios[p.workload] for p in c}) for c in _chunks(todo, slots, chunk)]
    with _bar(progress) as bar, results.open("a") as f:
        task = bar.add_task("sweep", total=total, completed=total - len(todo))
        for rows in run(tasks):
            f.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())
            bar.advance(task, len(rows))
