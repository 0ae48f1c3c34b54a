"""Transitional: the names mm/ and arch/ still import from here. The engine moved to machine/engine.py and
the CPU state constants to machine/cpu.py (issue 17); once mm/ and arch/ import them from there (their
branches), delete this module."""
from mmugather.machine.cpu import P_COND_RESCHED, P_ENABLE, P_PLAIN, TLBSTATE_LAZY, TLBSTATE_OK
from mmugather.machine.engine import INF, Elapse

__all__ = ["INF", "P_COND_RESCHED", "P_ENABLE", "P_PLAIN", "TLBSTATE_LAZY", "TLBSTATE_OK", "Elapse"]
