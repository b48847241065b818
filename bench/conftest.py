"""Machinery shared by the benches.

* ``report``: tables and lines printed in pytest's terminal summary, so they show under
  ``pytest bench/ -q`` (which swallows ``print``).
* ``timings``: the minimum time of a benchmark or of a peer timed in the same test — ``None``
  under ``--benchmark-disable``, the smoke run, where each function runs once and nothing is timed.
* ``goal``: every goal is checked the same way: the value and its goal go to the report's
  "goals" section, and a missed goal fails the bench; an unmeasured value (smoke run) is
  reported as such and not judged.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import pytest

_SECTIONS: dict[str, list[str]] = {}


class Report:
    def line(self, section: str, text: str, header: Optional[str] = None) -> None:
        """Add ``text`` to ``section``; ``header`` is written once, above the section's first line."""
        lines = _SECTIONS.setdefault(section, [])
        if not lines and header is not None:
            lines.append(header)
        lines.append(text)


@pytest.fixture(scope="session")
def report() -> Report:
    return Report()


def pytest_terminal_summary(terminalreporter):
    for section, lines in _SECTIONS.items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)


class Timings:
    def __init__(self, benchmark):
        self.enabled = not benchmark.disabled
        self._benchmark = benchmark

    def benchmark_seconds(self) -> Optional[float]:
        """The fastest round of the test's ``benchmark`` call, or None in a smoke run."""
        return self._benchmark.stats.stats.min if self.enabled else None

    def benchmark_rounds(self) -> Optional[list[float]]:
        """Every timed round of the test's ``benchmark`` call in order (warm-up rounds excluded),
        or None in a smoke run."""
        return list(self._benchmark.stats.stats.data) if self.enabled else None

    def minimum_seconds(self, function: Callable[[], object], rounds: int = 5) -> Optional[float]:
        """Fastest of ``rounds`` runs of ``function`` after one warm-up; in a smoke run it does not
        run and returns None. Shared machines are noisy: the minimum is the steadiest statistic."""
        if not self.enabled:
            return None
        function()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            function()
            best = min(best, time.perf_counter() - start)
        return best


@pytest.fixture
def timings(benchmark) -> Timings:
    return Timings(benchmark)


@pytest.fixture
def goal(report: Report):
    def check(label: str, value: Optional[float], limit: float, *, higher_is_better: bool) -> None:
        """Report ``value`` against its goal ``limit`` and fail the bench if it misses it."""
        sign = ">=" if higher_is_better else "<="
        if value is None:
            report.line("goals", f"{label}: not measured (smoke run), goal {sign} {limit:g}")
            return
        met = value >= limit if higher_is_better else value <= limit
        report.line("goals", f"{label}: {value:.3g}, goal {sign} {limit:g}: {'met' if met else 'MISSED'}")
        assert met, f"{label}: {value:.3g} misses its goal {sign} {limit:g}"

    return check
