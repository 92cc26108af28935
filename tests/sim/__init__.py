"""Deterministic simulation testing (VOPR style) of exactly-once consolidation.

``run_seed(seed, backend=...)`` runs one seeded schedule of writers, consolidators and
maintenance jobs under injected storage faults and checks every value against a model of the
acknowledged writes. ``python -m tests.sim --help`` soaks many seeds or replays one.
"""
