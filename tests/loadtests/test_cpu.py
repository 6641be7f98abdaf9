"""The bench's server CPU accounting (loadtests/cpu.py) on a real process tree that burns known CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtests.cpu import CpuMeter, process_tree, tree_cpu_seconds

BURN = 0.4  # CPU seconds, in each of three processes


def test_tree_cpu_counts_grandchildren_and_keeps_exited_ones():
    """A forkserver-started grandchild, a subprocess and the root itself each burn 0.4 s: the
    tree's CPU grows by at least most of 1.2 s; when the subprocess exits and is reaped its time
    moves into its parent's children_* and the total neither drops nor counts it twice."""
    script = Path(__file__).with_name("burn_tree.py")
    process = subprocess.Popen([sys.executable, str(script), str(BURN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        meter = CpuMeter([process.pid])
        meter.start()
        before = tree_cpu_seconds([process.pid])
        assert process.stdout.readline() == "burned\n"
        burned = tree_cpu_seconds([process.pid])
        # the root, the forkserver, its worker (a grandchild) and the subprocess at least
        assert len(process_tree([process.pid])) >= 4
        assert 3 * BURN * 0.9 <= burned - before < 3 * BURN + 1.5, burned - before

        process.stdin.write("reap\n")
        process.stdin.flush()
        assert process.stdout.readline() == "reaped\n"
        reaped = tree_cpu_seconds([process.pid])
        # own time alone would drop by the subprocess's 0.4 s here; counting it twice would add it
        assert abs(reaped - burned) < 0.15, (burned, reaped)
        assert meter.stop() >= 3 * BURN * 0.9
    finally:
        process.stdin.close()
        process.wait(30)
    assert tree_cpu_seconds([process.pid]) == 0.0  # a tree that is gone has nothing to count


def test_meter_without_roots_measures_nothing():
    meter = CpuMeter([])
    meter.start()
    assert meter.stop() is None
