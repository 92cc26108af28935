"""Deterministic simulation (VOPR style): random schedules of writers, consolidators and
maintenance jobs under storage faults, checked against a model of the acknowledged writes.

Every failure message names its seed and a one-line replay command
(``python -m tests.sim --seed N --backend B --profile P``, run from the repository root).
The quick tests below run a few hundred seeds; ``python -m tests.sim --seeds 100000`` soaks.

On the code this suite was written against (88ea7bc), the sweeps and the ``bug1``..``bug4``
scenarios fail: they are the regression tests of known exactly-once bugs.

``test_finds_reinjected_bug`` puts old behaviours back into the library for one run
(:mod:`tests.sim.inject`: the age-based sweep and compaction clean-up, history readers that skip a
missing object, catalog read-modify-overwrite, trusting a delete) and asserts that a few seeds
find each, and that the same seeds pass without it. Its seed ranges hold seeds known to find the
bug; a change to what a seed draws moves them: find new ones with
``python -m tests.sim --profile P --inject NAME --stop-at-first``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import Root
from tests.sim.simulator import FOCUSED, SCENARIOS, SimResult, run_scenario, run_seed

# injection -> (profile, seeds of which at least one finds it, what its failures say)
REINJECTED = {
    "bug1": ("gc", range(20, 30), ("named-object-missing", "clean-consolidation-failed", "records-unreadable")),
    "bug2": ("gc", range(66, 72), ("named-object-missing", "lost-")),
    "bug2-clock": ("gc", range(340, 350), ("named-object-missing", "lost-")),
    "bug3": ("operator", range(0, 4), ("reader-ignored-missing-object-recalculate",)),
    "bug4": ("swarm", range(0, 6), ("catalog-change-lost", "connect-failed", "clean-consolidation-failed")),
    "trusted-delete": ("swarm", range(8, 14), ("delete", "double")),
}

BACKENDS = ["memory", "local"]


def report(results: list[SimResult]) -> str:
    """Every failure with its replay command, and how often each kind of failure came up."""
    failed = [r for r in results if not r.ok]
    tags = Counter(t for r in failed for t in r.tags)
    head = f"{len(failed)} of {len(results)} seeds failed: {dict(tags.most_common())}"
    return "\n".join([head, *(r.summary() for r in failed[:15])])


def sweep(seeds: range, backend: str, profile: str = "swarm") -> None:
    results = [run_seed(seed, backend, profile=profile) for seed in seeds]
    assert all(r.ok for r in results), report(results)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_seed_replays_exactly(backend: str) -> None:
    """Same seed, same schedule, same faults, same outcome: compared by a digest of every storage
    call (who made it, with which keys, which fault fired, what came back)."""
    for seed in (3, 14, 44):
        first, second = (run_seed(seed, backend, trace=True) for _ in range(2))
        assert first.trace == second.trace
        assert (first.digest, first.problems, first.tags, first.fired) == (
            second.digest, second.problems, second.tags, second.fired)
        assert first.steps > 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_swarm_of_faults(backend: str) -> None:
    """Each seed draws its own mix of fault classes, actors and interleaving."""
    sweep(range(120 if backend == "memory" else 60), backend)


@pytest.mark.parametrize("profile", ["none", *FOCUSED])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_fault_class(backend: str, profile: str) -> None:
    """Ten seeds with only one fault class on (``none``: interleavings only)."""
    start = 1000 * (["none", *FOCUSED].index(profile) + 1)
    sweep(range(start, start + 10), backend, profile)


def test_gc_profile() -> None:
    """Fenced garbage collection under pauses of hours to days: compactions and consolidations
    paused between writing their objects and their commit while the others sweep."""
    sweep(range(20), "memory", "gc")


@pytest.mark.parametrize("name", sorted(REINJECTED))
def test_finds_reinjected_bug(name: str) -> None:
    """Each old bug, put back for the run, is found within a few seeds (by a failure of the
    expected kind), and the same seeds pass on the library as it is."""
    profile, seeds, kinds = REINJECTED[name]
    injected = [run_seed(seed, profile=profile, inject=name) for seed in seeds]
    found = [r for r in injected if not r.ok]
    assert found, f"{name} not found in seeds {seeds.start}..{seeds.stop - 1} ({profile})"
    for r in found:
        assert any(k in t for t in r.tags for k in kinds), r.summary()
    sweep(seeds, "memory", profile)


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_known_bug_scenario(backend: str, name: str) -> None:
    """The four known double applications as small forced schedules (see ``scenario``):
    bug1 S3 DeleteObjects with per-key errors, bug2 denied deletes, bug3 a local remove that
    stops at a missing marker, bug4 a multi-day flush that fails half-way."""
    result = run_scenario(name, backend)
    assert result.ok, result.summary()


@pytest.mark.s3
def test_swarm_on_s3(s3_root: Root) -> None:
    """A handful of seeds on the moto S3 server (each seed gets its own prefix)."""
    results = [run_seed(seed, "s3", uri=f"{s3_root.uri}/seed-{seed}", endpoint_url=s3_root.endpoint_url)
               for seed in range(3)]
    results += [run_scenario(name, "s3", uri=f"{s3_root.uri}/{name}", endpoint_url=s3_root.endpoint_url)
                for name in ("bug1", "bug4")]
    assert all(r.ok for r in results), report(results)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_long_swarm(backend: str) -> None:
    """A longer soak (a few minutes per backend)."""
    sweep(range(100_000, 102_000), backend)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["gc", "pause", "operator", "skew"])
def test_long_new_fault_classes(profile: str) -> None:
    """The fault classes of issue 15 alone, a few hundred seeds each."""
    sweep(range(200_000, 200_300), "memory", profile)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bug3", "bug4", "trusted-delete"])
def test_swarm_finds_reinjected_bug(name: str) -> None:
    """The plain swarm (no focused profile) finds these within 200 seeds."""
    assert any(not run_seed(seed, inject=name).ok for seed in range(200)), name
