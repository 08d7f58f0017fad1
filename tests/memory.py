"""Measuring how much memory a step makes this process hold, for the tests that feed hostile
input to a decoder: the kernel's peak resident set size, reset before the step."""

from __future__ import annotations


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakRss:
    """``with PeakRss() as mem: ...`` then ``mem.growth``: bytes by which this process's resident
    memory peaked above where it was at the start. Resets the kernel's high-water mark
    (``/proc/self/clear_refs`` ← 5, proc(5)) and reads ``VmHWM`` − ``VmRSS`` of
    ``/proc/self/status``; a peak that was freed again before the end still counts."""

    growth: int = 0

    def __enter__(self) -> PeakRss:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = _status_kib("VmHWM") * 1024 - self.start
