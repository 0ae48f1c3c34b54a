"""The engine's contract with the tasks it runs: named errors for a body that is not a generator, a yield
that is neither time, a call nor a request, and negative time; bounds on simulated time and on steps."""
import pytest

from mmugather.kernel.locking import LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE, PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.kernel.rcu import Rcu
from mmugather.kernel.smp import Sleep, SmpCallFunctionMany
from mmugather.machine.costs import Costs
from mmugather.machine.cpu import FrameStack, TaskContractError
from mmugather.machine.engine import DeadlockError, Engine, EngineObserver, LimitExceeded
from mmugather.report.metrics import Metrics
from mmugather.sim.invariants import Invariants


class _NoArch:
    def enter_lazy_tlb(self, c):
        pass

    def switch_mm(self, c, mm):
        pass


def engine(**bounds) -> Engine:
    metrics = Metrics(1)
    e = Engine(1, Costs(), "none", metrics, Invariants(metrics), **bounds)
    e.arch = _NoArch()
    e.rcu = Rcu(e.cpus, metrics)
    return e


def run_body(body, **bounds) -> int:
    e = engine(**bounds)
    e.spawn("t", 0, "user", lambda c, task: body())
    return e.run()


def test_a_body_that_is_not_a_generator_is_refused_at_spawn():
    with pytest.raises(TaskContractError, match=r"t\[1\]: its body must be a generator, got list"):
        engine().spawn("t", 0, "user", lambda c, task: [1, 2])


@pytest.mark.parametrize("bad,what", [("oops", "str"), (True, "bool"), (1.5, "float"), (object(), "object")])
def test_a_yield_that_is_not_time_a_call_or_a_request_is_named(bad, what):
    def body():
        yield 10
        yield bad
    with pytest.raises(TaskContractError, match=rf"task t\[1\] on CPU 0 yielded .*\({what}\): not an int"):
        run_body(body)


def test_negative_time_is_refused():
    def body():
        yield 5
        yield -3
    with pytest.raises(TaskContractError, match=r"yielded -3 ns \(negative\)"):
        run_body(body)


def test_a_run_within_its_bounds_finishes_at_its_time():
    def body():
        for _ in range(10):
            yield 100
            yield PREEMPT_DISABLE
            yield PREEMPT_ENABLE
    switch = Costs().context_switch                  # the first switch to the task
    assert run_body(body, max_sim_ns=switch + 1000, max_steps=21) == switch + 1000


def test_max_sim_ns_stops_a_task_that_spends_time_forever():
    def body():
        while True:
            yield 100
    with pytest.raises(LimitExceeded, match=r"max_sim_ns=5000 exceeded") as e:
        run_body(body, max_sim_ns=5000)
    assert e.value.bound == "max_sim_ns" and e.value.limit == 5000


def test_max_steps_stops_a_task_that_never_spends_time():
    def body():
        while True:
            yield PREEMPT_DISABLE
            yield PREEMPT_ENABLE
    with pytest.raises(LimitExceeded, match=r"max_steps=50 exceeded: t\[1\] on CPU 0"):
        run_body(body, max_steps=50)


def test_max_steps_counts_returns_and_zero_time():
    """Yields of 0 ns and returns count: 3 calls that yield 0 and return, then the body's return: 7 steps
    fit in max_steps=7, not in 6."""
    def leaf():
        yield 0

    def body():
        for _ in range(3):
            yield leaf()
    run_body(body, max_steps=7)
    with pytest.raises(LimitExceeded):
        run_body(body, max_steps=6)


def test_a_deadlock_under_a_time_bound_is_still_a_deadlock():
    from mmugather.kernel.locking import Mutex, MutexLock

    m = Mutex("m")

    def body():
        yield MutexLock(m)
        yield MutexLock(m)
    with pytest.raises(DeadlockError):
        run_body(body, max_sim_ns=10_000)


def test_bounds_must_be_positive_ints():
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        engine(max_steps=0)


class _Recorder(EngineObserver):
    def __init__(self):
        self.events = []

    def spawned(self, task):
        self.events.append(("spawned", task.name))
        task.watch().listeners.append(self)

    def pushed(self, stack, gen):
        self.events.append(("push", gen.gi_code.co_name))

    def popped(self, stack, gen):
        self.events.append(("pop", gen.gi_code.co_name, list(stack.steps)))

    def preempt_off(self, c):
        self.events.append(("off", c.clock))

    def preempt_on(self, c):
        self.events.append(("on", c.clock))

    def run_ended(self):
        self.events.append(("end",))


def test_observers_see_spawns_calls_returns_and_preemption_spans():
    """A FrameStack counts resumptions per frame: a call counts 1 when pushed, its caller 1 more when it returns."""
    rec = _Recorder()
    e = engine()
    e.attach(rec)

    def leaf():
        yield 7

    def body():
        yield PREEMPT_DISABLE
        yield leaf()
        yield PREEMPT_ENABLE
    e.spawn("t", 0, "user", lambda c, task: body())
    e.run()
    t0 = Costs().context_switch
    assert rec.events == [("spawned", "t"), ("off", t0), ("push", "leaf"), ("pop", "leaf", [1]), ("on", t0 + 7),
                          ("pop", "body", []), ("end",)]
    assert isinstance(e.tasks[1].stack, FrameStack)


def test_an_unobserved_engine_keeps_plain_stacks_and_steps_in_the_loop_itself():
    e = engine()
    task = e.spawn("t", 0, "user", lambda c, task: iter_body())
    assert type(task.stack) is list and e.step == e._run_cpu


def iter_body():
    yield 1


def test_tick_hooks_run_every_tick_on_a_busy_cpu_only_with_interrupts_on():
    """Engine.on_tick: ticks at multiples of TICK_NS while the CPU runs a task; the tick at 4 ms finds
    interrupts off and is dropped; the CPU sleeps from 10 ms to 30 ms, so its tick stops (NO_HZ_IDLE) and
    starts again at the first multiple after it wakes."""
    e = engine()
    ticks = []
    e.on_tick(lambda c: ticks.append((c.id, e.now)))
    ms = 1_000_000

    def body():
        yield LOCAL_IRQ_DISABLE
        for _ in range(50):
            yield ms // 10                    # 0..5 ms, interrupts off
        yield LOCAL_IRQ_ENABLE
        for _ in range(50):
            yield ms // 10                    # 5..10 ms
        yield Sleep(20 * ms)
        for _ in range(50):
            yield ms // 10                    # 30..35 ms
    e.spawn("t", 0, "user", lambda c, task: body())
    e.run()
    assert e.TICK_NS == 4 * ms
    assert ticks == [(0, 8 * ms), (0, 32 * ms)]


def test_a_tick_hook_must_be_callable():
    with pytest.raises(TypeError, match="on_tick"):
        engine().on_tick(None)


def test_an_ipi_reaching_a_cpu_that_waits_for_its_own_acks_is_handled_inside_the_wait():
    """Two CPUs send each other an IPI at the same time (will-it-scale's threads:2). Each spins in
    csd_lock_wait() with interrupts on (kernel/smp.c smp_call_function_many_cond()), so it runs the other's
    handler while it waits: both calls take one round trip (send + delivery + handler + ack), not a round
    trip plus the other's handler run after the wait."""
    costs = Costs(ipi_send=100, ipi_delivery=100, ipi_handler=5000, ipi_ack=100)
    metrics = Metrics(2)
    e = Engine(2, costs, "none", metrics, Invariants(metrics))
    e.arch = _NoArch()
    e.rcu = Rcu(e.cpus, metrics)
    done = {}

    def body(c, other):
        start = c.clock
        yield SmpCallFunctionMany([other], lambda t: 0)
        done[c.id] = c.clock - start
    for cpu in (0, 1):
        e.spawn(f"t{cpu}", cpu, "user", lambda c, task, o=1 - cpu: body(c, o))
    e.run()
    assert done == {0: 5300, 1: 5300}             # (the old engine: 10300 and 10400)
    assert metrics.ipis_by_cpu == [1, 1]
