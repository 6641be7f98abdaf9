"""Server CPU time: what a benchmark run cost the server's whole process tree, from the kernel's
own counters (psutil reads /proc/<pid>/stat).

    before = tree_cpu_seconds([server_pid])
    ...                                        # the measured run
    spent = tree_cpu_seconds([server_pid]) - before

The tree is every root and all its live descendants, however deep: the gateway, its media
workers (forked by a multiprocessing forkserver, so grandchildren) and the resource tracker;
tritonserver and its Python-backend stubs. Each process counts its own user + system time (all
its threads) plus `children_user + children_system`: the time of its children that have exited
*and been reaped*, which the kernel adds to the parent at the wait(). So the sum over the tree
is conserved when a process exits, and the difference of two sums is exactly the CPU spent in
between, including by processes that started or exited in between (a replaced media worker),
as long as whoever reaps them is in the tree. Not counted: a descendant that was orphaned and
reaped by init, and one that starts and exits between listing the tree and reading it (a race
of microseconds, once per reading).
"""

from __future__ import annotations

from collections.abc import Iterable


def process_tree(roots: Iterable[int]) -> list:
    """psutil.Process for each live root and each of its live descendants, once each."""
    import psutil

    processes, seen = [], set()
    for pid in roots:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            if process.pid not in seen:
                seen.add(process.pid)
                processes.append(process)
    return processes


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds of the trees under `roots`: each live process's own, plus what
    its reaped children spent (see the module's docstring for why the difference is exact)."""
    import psutil

    total = 0.0
    for process in process_tree(roots):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # exited since the listing: its parent's children_* has it
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class CpuMeter:
    """CPU seconds of a server's process tree over a window: `start()`, then `stop()` -> seconds.
    With no roots (a gateway given by URL, not started here) it measures nothing: None."""

    def __init__(self, roots: Iterable[int]):
        self.roots = tuple(roots)
        self._began: float | None = None

    def start(self) -> None:
        self._began = tree_cpu_seconds(self.roots) if self.roots else None

    def stop(self) -> float | None:
        if self._began is None:
            return None
        return tree_cpu_seconds(self.roots) - self._began
