"""The benchmark's one error: a run that did not produce a measurement."""

from __future__ import annotations


class BenchError(Exception):
    """A run did not produce a measurement (a process died, an object differs, a timeout)."""
