"""The race explorer: systematic and randomised search of a scenario's interleavings for a violation of
the invariants (sim/invariants.py), shrinking of the schedule found, and its story in kernel terms."""
