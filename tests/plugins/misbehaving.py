"""Policy plugins that break the kernel-path contract or fail while they run; each must end in one line
naming the plugin, never in an internal error or a clean exit."""
import sys

from mmugather.policies import Linux30


class YieldsStr(Linux30):
    def tlb_flush(self, c, tlb):
        yield "ten nanoseconds"


class YieldsNegative(Linux30):
    def tlb_flush(self, c, tlb):
        yield -5


class NotAGenerator(Linux30):
    def tlb_flush(self, c, tlb):
        self.machine.tlb.flush_all(c)
        return 42


class Recurses(Linux30):
    def tlb_flush(self, c, tlb):
        yield self.tlb_flush(c, tlb)


class RecursesPlainly(Linux30):
    def _tlb_remove_page(self, c, tlb, pfn):
        return self._tlb_remove_page(c, tlb, pfn)


class RaisesMidRun(Linux30):
    def tlb_flush(self, c, tlb):
        yield 10
        raise ValueError("my flush is broken")


class ExitsMidRun(Linux30):
    def tlb_flush(self, c, tlb):
        sys.exit(3)
        yield
