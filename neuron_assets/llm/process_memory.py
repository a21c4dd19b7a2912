"""A server process's memory: a limit of its own, a watch on its resident size, and what a death meant.

The local llama.cpp server is the one process of a run whose memory grows with the run
(its prompt cache), so it is started with a data-size limit (``RLIMIT_DATA``: heap and
anonymous mappings, not the memory-mapped model file) and as the kernel's first choice
when the host runs out of memory (``oom_score_adj`` 1000): it, never the Dagster run or
the user's desktop, is what stops. ``MemoryWatch`` samples its resident memory so that a
death can be reported with the last figure, and put down to memory when that was the cause.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import threading
from dataclasses import dataclass

GIB = 1 << 30
# A death is put down to memory when the last sample was at least this share of the limit
# that applies (the process's own, or the host's for the kernel's out-of-memory killer).
NEAR_LIMIT = 0.8
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GIB, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``"6GiB"``, ``"512M"``, ``"1.5g"`` or a plain number of bytes; a clear error otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write bytes, or a number with K, M, G or T (e.g. 6GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_gib(n_bytes: int | None) -> str:
    return "unknown" if n_bytes is None else f"{n_bytes / GIB:.2f} GiB"


def resident_bytes(pid: int) -> int | None:
    """The process's resident memory (``VmRSS``), or None once it is gone."""
    return _status_bytes(pid, "VmRSS")


def peak_resident_bytes(pid: int) -> int | None:
    """The process's peak resident memory so far (``VmHWM``), or None once it is gone."""
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int, field: str) -> int | None:
    """A memory field of ``/proc/<pid>/status`` in bytes, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def host_memory() -> tuple[int, int | None]:
    """The host's total memory and what is available now (``/proc/meminfo``; available None where unknown)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0]) * 1024
    except FileNotFoundError:
        pass
    total = values.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, values.get("MemAvailable")


def limit_process(pid: int, limit_bytes: int | None) -> None:
    """Cap process ``pid``'s data size at ``limit_bytes`` (None: no cap) and make it the
    out-of-memory killer's first choice; each is skipped where the platform refuses it.

    Applied from the parent right after the start (``prlimit``), not in a ``preexec_fn``,
    which is unsafe in a process with threads such as a Dagster run.
    """
    if limit_bytes is not None:
        try:
            resource.prlimit(pid, resource.RLIMIT_DATA, (limit_bytes, limit_bytes))
        except (AttributeError, ValueError, OSError):
            pass
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


@dataclass
class MemoryFigures:
    last: int | None = None  # resident bytes at the latest sample
    peak: int | None = None
    host_in_use: int | None = None  # the host's memory in use (total - available) at the latest sample
    samples: int = 0


class MemoryWatch:
    """Samples a process's resident memory every ``interval_s`` on a daemon thread, until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.figures = MemoryFigures()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"memory-watch-{pid}", daemon=True)
        self._thread.start()

    def sample(self) -> MemoryFigures:
        """Take a sample now (kept only while the process lives) and return the figures."""
        self._take()
        return self.figures

    def _take(self) -> bool:
        """Record one sample; False once the process is gone."""
        rss = resident_bytes(self.pid)
        if rss is not None:
            total, available = host_memory()
            with self._lock:
                f = self.figures
                f.last, f.samples = rss, f.samples + 1
                f.peak = rss if f.peak is None else max(f.peak, rss)
                f.host_in_use = None if available is None else total - available
        return rss is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and self._take():
            pass

    def stop(self) -> None:
        self._stop.set()


def describe_memory_at_death(code: int, figures: MemoryFigures, limit: int | None) -> str:
    """What the memory figures say of a process that ended with ``code`` (negative: a signal).

    Out of memory is named as the likely cause when the last sample was near the process's own
    limit, or, for SIGKILL (what the kernel's out-of-memory killer sends), when the host's
    memory was nearly all in use.
    """
    host_total, _ = host_memory()
    text = (
        f"its resident memory was {format_gib(figures.last)} at the last sample "
        f"(peak {format_gib(figures.peak)}; its own limit {format_gib(limit) if limit else 'none'}; "
        f"the host has {format_gib(host_total)}"
        + (f", {format_gib(figures.host_in_use)} of it in use then)" if figures.host_in_use is not None else ")")
    )
    near_own = limit is not None and figures.last is not None and figures.last >= NEAR_LIMIT * limit
    near_host = code == -signal.SIGKILL and (figures.host_in_use or figures.last or 0) >= NEAR_LIMIT * host_total
    if near_own or near_host:
        where = "its own limit" if near_own else "the host's memory"
        text += (
            f": most likely out of memory (it was near {where}). Lower the prompt cache "
            "(NEURON_ASSETS_LOCAL_LLM_CACHE) or the context, or raise NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT"
        )
    return text
