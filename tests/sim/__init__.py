"""Deterministic simulation testing (VOPR style) of exactly-once consolidation.

``run_seed(seed, backend=...)`` runs one seeded schedule of writers, consolidators and
maintenance jobs (and schema changes and an operator's deletes) under injected storage faults,
pauses and clock skew, and checks every value and the catalog against a model of the acknowledged
writes. ``python -m tests.sim --help`` soaks many seeds, replays one, or re-injects an old bug.
"""
