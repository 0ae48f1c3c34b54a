"""Transitional: host/ still imports Simulation from here; it moved to sim/simulation.py (issue 17). Once
host/ imports mmugather.sim.simulation (its branch), delete this module."""
from mmugather.sim.simulation import Simulation

__all__ = ["Simulation"]
