"""What the service's processes use: peak resident memory, sampled while the bench runs, and
CPU time, read around a load."""

from __future__ import annotations

import threading

import psutil


class RssSampler:
    """Every `interval` seconds, reads the RSS of each watched process and of every process
    it started (forked web processes, dramatiq's master and workers); keeps each one's peak.
    Processes that exit keep the peak they reached."""

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._roots: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        # (role, pid) -> (command line, peak bytes)
        self.peaks: dict[tuple[str, int], tuple[str, int]] = {}

    def watch(self, role: str, pid: int) -> None:
        with self._lock:
            self._roots.append((role, pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                roots = list(self._roots)
            for role, pid in roots:
                self._sample(role, pid)
            self._stop.wait(self._interval)

    def _sample(self, role: str, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in family:
            try:
                rss = proc.memory_info().rss
                cmd = " ".join(proc.cmdline()[-4:])
            except psutil.Error:
                continue
            key = (role, proc.pid)
            before = self.peaks.get(key, ("", 0))[1]
            self.peaks[key] = (cmd, max(before, rss))

    def by_role(self) -> dict[str, list[dict[str, object]]]:
        """Per role, each process's peak RSS in MB, largest first."""
        out: dict[str, list[dict[str, object]]] = {}
        for (role, pid), (cmd, peak) in sorted(self.peaks.items(), key=lambda kv: -kv[1][1]):
            out.setdefault(role, []).append(
                {"pid": pid, "command": cmd, "peak_rss_mb": round(peak / 2**20, 1)}
            )
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and every living process it started.
    Read before and after a load, the difference is that load's CPU cost, which depends far
    less than throughput on what else the machine runs."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in family:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total
