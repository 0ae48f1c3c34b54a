"""The soft-lockup watchdog (kernel/watchdog.c), scaled: a latency invariant, off unless a threshold is set.

In the kernel a per-CPU hrtimer fires every sample_period (a fifth of the threshold: 4 s of 20 s, 2 *
watchdog_thresh) and queues softlockup_fn() on the CPU's stopper thread, the highest-priority task;
softlockup_fn() touches the CPU's timestamp (update_touch_ts()). The stopper runs at the CPU's next
scheduling point, so the timestamp falls behind only while the CPU runs kernel code that cannot schedule;
watchdog_timer_fn() reports "BUG: soft lockup - CPU#N stuck for Ns!" once it is older than the threshold.

The model keeps the timestamp exactly: every point where the stopper could run touches it (a context
switch or going idle, cond_resched(), a might_sleep() the preemption model honours, preempt_count back to 0
under full preemption with IRQs on, entry from and return to user mode), and a stretch of kernel code longer
than the threshold is reported as `soft-lockup` when it ends. Reporting at the end of the stretch rather
than from the timer changes when it is reported, not whether. An `EngineObserver`: the engine calls it only
when it is attached, which Simulation does only when machine.softlockup_ns is set.
"""
from __future__ import annotations

from mmugather.kernel.sched import P_COND_RESCHED
from mmugather.machine.engine import EngineObserver


class SoftLockupWatchdog(EngineObserver):
    """Per-CPU watchdog_touch_ts and the check of watchdog_timer_fn(), with threshold `softlockup_ns`."""

    def __init__(self, softlockup_ns: int, invariants) -> None:
        if softlockup_ns <= 0:
            raise ValueError(f"softlockup_ns must be positive, got {softlockup_ns}")
        self.softlockup_ns = softlockup_ns
        self.invariants = invariants
        self.touch_ts: list[int] = []
        self.voluntary = self.full = False

    def attached(self, engine) -> None:
        self.touch_ts = [0] * len(engine.cpus)
        self.voluntary, self.full = engine.voluntary, engine.full

    def touch(self, c, check: bool = True) -> None:
        """CPU c passes a point where the stopper could run softlockup_fn(): with `check`, report the stretch
        of kernel code ending here if it was longer than the threshold; then update_touch_ts()."""
        stuck = c.clock - self.touch_ts[c.id]
        self.touch_ts[c.id] = c.clock
        if check and stuck > self.softlockup_ns:
            self.invariants.report(
                "soft-lockup", c.id,
                f"CPU {c.id} ran kernel code of {c.curr} for {stuck} ns without a scheduling point "
                f"(threshold {self.softlockup_ns} ns), until {c.clock} ns", key=c.clock)

    def kernel_entry(self, c) -> None:
        """Entry from user mode (a system call, a fault): user mode is preemptible throughout, so the
        stretch of kernel code starts here."""
        self.touch(c, check=False)

    def user_return(self, c) -> None:
        """Return to user mode: a scheduling point (exit_to_user_mode_loop())."""
        self.touch(c)

    def switching(self, c) -> None:
        self.touch(c)

    def resched_point(self, c) -> None:
        if c.point == P_COND_RESCHED or self.voluntary:
            self.touch(c)

    def preempt_on(self, c) -> None:
        if self.full and not c.irqs_off:
            self.touch(c)
