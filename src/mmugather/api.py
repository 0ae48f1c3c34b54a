"""The Python API: what the command line runs, callable from a script or a notebook (docs/tutorial.md).

    import mmugather
    c = mmugather.compare("small", ["3.0", "6.18"])
    c.to_dataframe()          # one row per run, a column per metric (pip install 'mmugather[pandas]')

A workload is a built-in name (`small`), a parametric name (`munmap:20000:blocked`), a scenario file or a
`Scenario`; a policy is a built-in name (`3.0`), a plugin spec (`FILE.py:CLASS`, `MODULE:CLASS`) or a policy
class (a subclass of a built-in policy). Bad input raises `mmugather.errors.InputError`, whose message is the
one line the command line prints. Results are plain dataclasses; `to_dict()` gives the JSON the command
line prints with `--json`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mmugather.explore  # noqa: F401  (the package, bound before __init__ names the function; its modules: explore())
from mmugather.errors import InputError
from mmugather.machine.costs import Costs, load_costs
from mmugather.machine.engine import LimitExceeded
from mmugather.parallel import Progress  # noqa: F401  (api.Progress: what compare tells of its runs)
from mmugather.policies import POLICIES, get_policy
from mmugather.policies.base import Kernel
from mmugather.policies.plugins import PluginError, plugin_guard
from mmugather.report.html import raw_distributions      # (here: compare's workers, forked, import nothing)
from mmugather.report.table import run_labels
from mmugather.sim.progress import RunFraction
from mmugather.sweep import flatten_metrics, load_results as _load_rows, run_sweep
# the one place the API imports the engine's entry point
from mmugather.sim.simulation import DEFAULT_MAX_SIM_NS, DEFAULT_MAX_STEPS, Simulation
from mmugather.workloads.builtin import resolve_workload
from mmugather.workloads.scenario import Scenario, parse_scenario, with_cpus
from mmugather.workloads.wis import ops_per_s

if TYPE_CHECKING:
    import pandas

    from mmugather.report.trace import ChromeTrace

WorkloadLike = str | os.PathLike[str] | Scenario
PolicyLike = str | type[Kernel]
PathLike = str | os.PathLike[str]
SNAPSHOT_VARIANTS = ("exit", "munmap-largest")


def resolve_scenario(workload: WorkloadLike | None = None, *, snapshot: PathLike | None = None,
                     variant: str = "exit", cpus: int | None = None) -> Scenario:
    """The scenario `workload` names (None: the default workload), or one built from a /proc snapshot (a
    directory or a shipped name such as "python"), torn down by `variant` (exit or munmap-largest)."""
    if snapshot is None:
        return workload if isinstance(workload, Scenario) else resolve_workload(
            None if workload is None else os.fspath(workload))
    if workload is not None:
        raise InputError("--workload and --snapshot: give one or the other")
    if variant not in SNAPSHOT_VARIANTS:
        raise InputError(f"--variant: expected one of {', '.join(SNAPSHOT_VARIANTS)}, got {variant!r}")
    from mmugather.workloads.snapshot import resolve_snapshot, snapshot_to_scenario
    snap = resolve_snapshot(os.fspath(snapshot))
    return parse_scenario(snapshot_to_scenario(snap, variant, cpus), f"snapshot {snapshot}")


def resolve_policy(policy: PolicyLike) -> type[Kernel]:
    """The policy class: a built-in name, a plugin spec, or a Kernel subclass that names an arch."""
    if isinstance(policy, str):
        return get_policy(policy)
    if not isinstance(policy, type) or not issubclass(policy, Kernel):
        raise InputError(f"policy {policy!r}: expected a policy name, MODULE:CLASS, FILE.py:CLASS or a "
                         f"subclass of mmugather.policies.base.Kernel")
    if not policy.arches:
        raise InputError(f"policy {policy.__qualname__}: names no arch (subclass a built-in policy such as "
                         f"mmugather.policies.Linux30)")
    return policy


def policy_name(cls: type[Kernel]) -> str:
    """How results name a policy: its own `name`, else (a class written in a notebook) its class name."""
    return cls.__dict__.get("name") or cls.__name__


def arch_list(arch: str | Sequence[str] | None) -> list[str] | None:
    """The arches named (a comma-separated string or a sequence), in order, without repeats; None for none."""
    if arch is None:
        return None
    names = arch.split(",") if isinstance(arch, str) else list(arch)
    arches = list(dict.fromkeys(a.strip() for a in names if a.strip()))
    if not arches:
        raise InputError("--arch: expected a comma-separated list of arches")
    return arches


def policy_arches(classes: list[type[Kernel]], arch: str | Sequence[str] | None
                  ) -> list[tuple[type[Kernel], str | None]]:
    """(policy class, arch or None for its first) for each run of a comparison: with arches given, each
    policy on each of them it supports (arm64 did not exist before Linux 3.7, so 2.6.39 runs on x86 only)."""
    arches = arch_list(arch)
    if arches is None:
        return [(cls, None) for cls in classes]
    pairs: list[tuple[type[Kernel], str | None]] = []
    for cls in classes:
        mine = [a for a in arches if a in cls.arches]
        if not mine:
            raise InputError(f"--arch: policy {policy_name(cls)} does not run on {', '.join(arches)} "
                             f"(it runs on: {', '.join(cls.arches)})")
        pairs += [(cls, a) for a in mine]
    return pairs


def check_machine(fail_nowait: float | None) -> None:
    """The overrides fit: a GFP_NOWAIT failure probability in [0, 1] (a `cpus` override folds the
    scenario onto that many CPUs: workloads.scenario.with_cpus)."""
    if fail_nowait is not None and not 0.0 <= fail_nowait <= 1.0:
        raise InputError(f"--fail-nowait: expected a probability in [0, 1], got {fail_nowait}")


def _costs(costs: Costs | PathLike | None) -> Costs:
    return costs if isinstance(costs, Costs) else load_costs(None if costs is None else os.fspath(costs))


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("to_dataframe() needs pandas: pip install 'mmugather[pandas]'") from None
    return pandas


@dataclass(frozen=True)
class Machine:
    """The simulated machine of a run: CPUs, arch (comma-joined in a comparison across arches),
    preemption model, GFP_NOWAIT failure probability."""
    cpus: int
    arch: str
    preempt: str
    fail_nowait: float


@dataclass(frozen=True)
class Run:
    """One simulation: the workload under one policy on one arch, and the metrics it reported."""
    workload: str
    policy: str
    arch: str
    seed: int
    machine: Machine
    metrics: dict[str, Any]
    ops_per_s: float | None = None          # counted loop iterations per simulated second (wis:...)
    known_bug: str | None = None            # the policy's own real bug that these violations are (Kernel.known_bug)
    distributions: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    def flat_metrics(self) -> dict[str, Any]:
        """The numeric metrics, flat: pte_lock_hold_ns.max, ..., violations as a count (as sweeps store)."""
        flat = flatten_metrics(self.metrics)
        return flat if self.ops_per_s is None else {**flat, "ops_per_s": self.ops_per_s}

    def to_dict(self) -> dict[str, Any]:
        """What `mmugather run --json` prints."""
        return {"workload": self.workload, "policy": self.policy, "seed": self.seed, "metrics": self.metrics}


@dataclass(frozen=True)
class Comparison:
    """The same workload under several policies (and arches): one Run each, in the order asked for."""
    workload: str
    machine: Machine
    seed: int
    runs: tuple[Run, ...]
    failures: tuple[PluginError, ...] = ()   # plugins that failed while they ran (their runs are left out)

    def to_dict(self) -> dict[str, Any]:
        """What `mmugather compare --json` prints."""
        runs: list[dict[str, Any]] = []
        for r in self.runs:
            runs.append({"policy": r.policy, "arch": r.arch, "metrics": r.metrics})
            if r.known_bug:
                runs[-1]["known_bug"] = r.known_bug
            if r.ops_per_s is not None:
                runs[-1]["ops_per_s"] = r.ops_per_s
        m = self.machine
        return {"workload": self.workload,
                "machine": {"cpus": m.cpus, "arch": m.arch, "preempt": m.preempt, "fail_nowait": m.fail_nowait},
                "seed": self.seed, "runs": runs}

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per run: its parameters (workload, policy, arch, cpus, preempt, fail_nowait, seed), then
        a column per metric (Run.flat_metrics)."""
        return _pandas().DataFrame([{"workload": r.workload, "policy": r.policy, "arch": r.arch,
                                     "cpus": r.machine.cpus, "preempt": r.machine.preempt,
                                     "fail_nowait": r.machine.fail_nowait, "seed": r.seed, **r.flat_metrics()}
                                    for r in self.runs])

    def write_html(self, path: PathLike) -> None:
        """A self-contained HTML report: the table, bar charts, and CDFs of each run's distributions."""
        from mmugather.report.html import write_html
        result = self.to_dict()
        labels = run_labels(result["runs"])
        write_html(result, path, {label: r.distributions for label, r in zip(labels, self.runs)})


@contextmanager
def _bounded(scenario: Scenario, cls: type[Kernel]) -> Iterator[None]:
    """A run that passes its simulated-time or step bound becomes an InputError naming the bound."""
    try:
        yield
    except LimitExceeded as e:
        option = {"max_sim_ns": "--max-sim-ns", "max_steps": "--max-steps"}[e.bound]
        raise InputError(f"{scenario.name} under {policy_name(cls)} stopped: {e} (the scenario may never end; "
                         f"{option} raises the bound)") from None


def _simulate(scenario: Scenario, cls: type[Kernel], trace: list | None, progress: Progress | None = None,
              **kw) -> Run:
    """Build and run one Simulation (traced when `trace` is a list: its ChromeTrace, process 1 with flow ids
    from 1, is appended to it before the run; tracing.one_file renumbers several for one file)."""
    with plugin_guard(cls), _bounded(scenario, cls):
        sim = Simulation(scenario, cls, **kw)
        label = f"{policy_name(cls)}/{sim.arch_name}"
        if progress is not None:
            progress.run_started(label, lambda: sim.engine.now, RunFraction(sim))
        if trace is not None:
            from mmugather.sim.tracing import attach_trace
            trace.append(attach_trace(sim))
        ended = 0
        try:
            metrics = sim.run()
            ended = metrics["sim_time_ns"]
        finally:
            if progress is not None:              # also a run that failed: it is no longer running
                progress.run_done(label, ended or sim.engine.now)
    rate = ops_per_s(scenario, metrics)
    return Run(scenario.name, policy_name(cls), sim.arch_name, sim.seed,
               Machine(sim.ncpus, sim.arch_name, sim.preempt, sim.fail_nowait), metrics,
               None if rate is None else round(rate, 1), sim.kernel.known_bug(metrics["violations"]),
               raw_distributions(sim.metrics))


Outcome = tuple["Run | PluginError", "ChromeTrace | None"]


def compare_run(scenario: Scenario, cls: type[Kernel], tracing: bool, progress: Progress | None = None,
                **kw) -> Outcome:
    """One run of a comparison, alone (in this process or a worker): its Run, or the PluginError of a
    plugin that failed while it ran, and its trace (as process 1, flow ids from 1; a plugin's partial one)
    when `tracing`. Any other error is raised."""
    traces: list | None = [] if tracing else None
    try:
        result: Run | PluginError = _simulate(scenario, cls, traces, progress, **kw)
    except PluginError as e:              # the other policies are still reported
        # its message, without the chain of the plugin's exception: that traceback holds the failed run's
        # Simulation, which a worker would pickle where exceptions pickle their tracebacks (tblib, which
        # distributed installs: a plugin's RecursionError is 1000 frames deep)
        result = PluginError(*e.args)
    return result, (traces[0] if traces else None)


def _start_trace(path: PathLike | None) -> list | None:
    if path is None:
        return None
    from mmugather.sim.tracing import check_trace_path
    check_trace_path(os.fspath(path))
    return []


def _save_trace(traces: list | None, path: PathLike | None) -> None:
    if traces is not None:
        assert path is not None, "traces are kept only when a path is given"
        from mmugather.sim.tracing import save_traces
        save_traces(traces, os.fspath(path))


RUNS_PER_CORE = 2


def compare_jobs(jobs: int | None, runs: int) -> int:
    """How many runs of a comparison run at once: `jobs`, at most one per run; by default every run, up
    to RUNS_PER_CORE per usable core. The host's scheduler shares the cores among them, so 3 runs on 2
    cores take about (sum of the runs) / 2, where one run per core would take two rounds of whole runs.
    1 where this process cannot fork workers (Windows, a daemonic process)."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise InputError(f"--jobs: expected an integer >= 1, got {jobs!r}")
    from mmugather.pool import can_fork, usable_cores
    return min(runs, jobs if jobs is not None else RUNS_PER_CORE * usable_cores()) if can_fork() else 1


def compare(workload: WorkloadLike | None = None, policies: str | Sequence[PolicyLike] = ("2.6.39", "3.0", "6.18"), *,
            arch: str | Sequence[str] | None = None, cpus: int | None = None, preempt: str | None = None,
            fail_nowait: float | None = None, seed: int | None = None, costs: Costs | PathLike | None = None,
            snapshot: PathLike | None = None, variant: str = "exit", trace: PathLike | None = None,
            max_sim_ns: int | None = DEFAULT_MAX_SIM_NS, max_steps: int | None = DEFAULT_MAX_STEPS,
            progress: Progress | None = None, jobs: int | None = None) -> Comparison:
    """Run `workload` under each policy (on each of `arch` it supports; default: its first arch) and return
    the runs side by side. `cpus`, `preempt` (none, voluntary, full), `fail_nowait` (probability that a
    GFP_NOWAIT batch allocation fails) and `seed` override the workload's own (None: keep them); `costs` is
    a Costs or a cost file. `snapshot` (instead of a workload) tears down a /proc snapshot; `trace` writes a
    Perfetto timeline of every run to that file. `max_sim_ns`/`max_steps` bound each run (a scenario that
    never ends is an InputError naming the bound). `progress` is told of each run (cli/progress.py).
    `jobs` runs that many runs at once in worker processes (default: every run, up to two per usable core:
    compare_jobs; 1: one after another in this process); the result is the same whatever `jobs`."""
    scenario = resolve_scenario(workload, snapshot=snapshot, variant=variant, cpus=cpus)
    names = [n.strip() for n in policies.split(",") if n.strip()] if isinstance(policies, str) else policies
    if not names:
        raise InputError("--policies: expected a comma-separated list of policies")
    classes = [resolve_policy(p) for p in names]
    if cpus is not None:
        scenario = with_cpus(scenario, cpus)
    check_machine(fail_nowait)
    kw = {"cpus": cpus, "preempt": preempt, "fail_nowait": fail_nowait, "seed": seed, "costs": _costs(costs),
          "max_sim_ns": max_sim_ns, "max_steps": max_steps}
    tracing = _start_trace(trace) is not None
    pairs = policy_arches(classes, arch)
    workers = compare_jobs(jobs, len(pairs))
    if workers > 1:
        from mmugather.parallel import Job, run_parallel
        labels = [f"{policy_name(cls)}/{a or next(iter(cls.arches))}" for cls, a in pairs]
        outcomes = run_parallel(Job(scenario, pairs, labels, tracing, kw, compare_run), workers, progress)
    else:
        outcomes = [compare_run(scenario, cls, tracing, progress, arch=a, **kw) for cls, a in pairs]
    runs = [r for r, _ in outcomes if isinstance(r, Run)]
    failures = [r for r, _ in outcomes if isinstance(r, PluginError)]
    if not runs:
        raise failures[0] if len(failures) == 1 else InputError("; ".join(map(str, failures)))
    if tracing:
        from mmugather.sim.tracing import one_file
        _save_trace(one_file([t for _, t in outcomes if t is not None]), trace)
    first = runs[0].machine
    machine = Machine(first.cpus, ",".join(dict.fromkeys(r.arch for r in runs)), first.preempt, first.fail_nowait)
    return Comparison(scenario.name, machine, runs[0].seed, tuple(runs), tuple(failures))


def run(workload: WorkloadLike | None = None, policy: PolicyLike | None = None, *, seed: int | None = None,
        costs: Costs | PathLike | None = None, arch: str | None = None, without_fixes: Sequence[str] = (),
        snapshot: PathLike | None = None, variant: str = "exit", trace: PathLike | None = None,
        max_sim_ns: int | None = DEFAULT_MAX_SIM_NS, max_steps: int | None = DEFAULT_MAX_STEPS) -> Run:
    """Run `workload` under one policy (default: the scenario's machine.policy) on `arch` (default: the
    policy's first), with the named fixes switched off (see `mmugather policies`); bounded as `compare`."""
    if workload is None and snapshot is None:
        raise InputError("run: give a scenario file, a built-in workload name or --snapshot")
    scenario = resolve_scenario(workload, snapshot=snapshot, variant=variant)
    cls = resolve_policy(policy or scenario.machine.policy)
    traces = _start_trace(trace)
    result = _simulate(scenario, cls, traces, seed=seed, costs=_costs(costs), arch=arch,
                       without_fixes=tuple(without_fixes), max_sim_ns=max_sim_ns, max_steps=max_steps)
    _save_trace(traces, trace)
    return result


@dataclass(frozen=True)
class Exploration:
    """The verdict of a search of a scenario's interleavings: `report` holds what `explore --json` prints
    (strategy, bound, covered, executions, transitions, states, violation, schedule, story, ...)."""
    scenario: str
    policy: str
    without_fixes: tuple[str, ...]
    arch: str | None
    report: dict[str, Any]
    replay_file: str | None = None
    actors: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def violation(self) -> dict | None:
        """The violation found ({"kind", "cpu", "detail", ...}), or None within the bound."""
        return self.report["violation"]

    @property
    def story(self) -> list[str]:
        """The per-CPU story of the (shrunk) violating schedule; empty when none was found."""
        return self.report["story"] or []

    @property
    def coverage(self) -> str:
        """What a search without a violation covered, in one sentence."""
        from mmugather.explore.session import coverage_sentence
        return coverage_sentence(self.report)

    def to_dict(self) -> dict[str, Any]:
        """What `mmugather explore --json` prints."""
        return {"scenario": self.scenario, "policy": self.policy, "without_fixes": list(self.without_fixes),
                "arch": self.arch, **self.report, "replay_file": self.replay_file}


def _replay_spec(policy: PolicyLike, cls: type[Kernel]) -> str:
    """The policy as a replay file names it: a plugin file by absolute path, a class by its file."""
    if isinstance(policy, str):
        if policy.partition(":")[0].endswith(".py"):
            where, _, name = policy.rpartition(":")
            return f"{Path(where).resolve()}:{name}"
        return policy
    if cls in POLICIES.values():
        return cls.name
    import inspect
    try:
        return f"{Path(inspect.getfile(cls)).resolve()}:{cls.__qualname__}"
    except (TypeError, OSError):
        raise InputError(f"out: policy {cls.__qualname__} has no source file a replay could load") from None


def explore(scenario: WorkloadLike, policy: PolicyLike | None = None, *, strategy: str = "exhaustive",
            max_preemptions: int = 2, budget: int | None = None, seed: int = 0, depth: int = 3,
            max_steps: int = 10_000, without_fixes: Sequence[str] = (), arch: str | None = None,
            shrink: bool = True, por: bool = True, out: PathLike | None = None, progress=None) -> Exploration:
    """Search the interleavings of a small scenario for an invariant violation (docs/explore.md):
    `exhaustive` (every schedule with at most `max_preemptions` preemptions), `pct` (bug depth `depth`) or
    `random`, at most `budget` executions of at most `max_steps` steps. A violation found is shrunk (unless
    `shrink` is False), told as a story, and saved as a replay file at `out` when given. `por` False:
    exhaustive without partial-order reduction (sleep sets). `progress` is called as the search goes
    (explore.search.Progress)."""
    from mmugather.explore.session import replay_document, run_search, target_spec, write_replay
    from mmugather.explore.target import KernelTarget
    sc = resolve_scenario(scenario)
    spec = policy or sc.machine.policy
    cls = resolve_policy(spec)
    target = KernelTarget(sc, cls, without_fixes=tuple(without_fixes), arch=arch)
    report = run_search(target, strategy=strategy, max_preemptions=max_preemptions, budget=budget, seed=seed,
                        pct_depth=depth, max_steps=max_steps, por=por, shrink=shrink, progress=progress)
    found = report["violation"] is not None
    if found and out is not None:
        inputs = target_spec(target.scenario, _replay_spec(spec, cls), without_fixes, None, arch)
        write_replay(os.fspath(out), replay_document(inputs, report, target.actor_names()))
    return Exploration(sc.name, policy_name(cls), tuple(without_fixes), arch, report,
                       os.fspath(out) if found and out is not None else None, target.actor_names())


@dataclass(frozen=True)
class SweepResults:
    """The rows of a sweep directory in grid order (DIR/results.jsonl, docs/sweeps.md): each has `id`, the
    point's parameters and its flattened `metrics`. `ran` and `skipped` count what the sweep() call that
    returned them did (None from load_results)."""
    directory: Path
    rows: list[dict[str, Any]]
    ran: int | None = None
    skipped: int | None = None

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per sweep point: id, arch, workload, policy, preempt, cpus, fail_nowait, seed, then a
        column per metric."""
        return _pandas().DataFrame([{k: v for k, v in r.items() if k != "metrics"} | r["metrics"]
                                    for r in self.rows])

    def write_html(self, path: PathLike) -> None:
        """A self-contained HTML report: the grid, each policy's mean metrics, metrics against parameters."""
        from mmugather.report.html import write_sweep_html
        write_sweep_html(self.rows, path)


def sweep(sweep_file: PathLike, out: PathLike, *, executor: str = "local", workers: int | None = None,
          chunk: int | None = None, resume: bool = False, progress: bool = True,
          max_memory: int | None = None) -> SweepResults:
    """Run every point of a sweep file's grid not yet in OUT/results.jsonl (docs/sweeps.md) on `executor`
    (local, dask or dask=ADDRESS) and return all the directory's rows. Without `resume`, an existing
    results file is an error. `max_memory` (bytes) bounds the largest point's estimate times the workers."""
    summary = run_sweep(sweep_file, out, executor=executor, workers=workers, resume=resume, chunk=chunk,
                        progress=progress, max_memory=max_memory)
    return SweepResults(Path(out), _load_rows(out), summary["ran"], summary["skipped"])


def load_results(directory: PathLike) -> SweepResults:
    """The rows of the last sweep run in `directory`, in grid order."""
    return SweepResults(Path(directory), _load_rows(directory))
