"""A process tree that burns a known amount of CPU, for tests/loadtests/test_cpu.py.

    python burn_tree.py SECONDS

This process, a grandchild started from a multiprocessing forkserver (as the gateway's media
workers are) and a subprocess child each burn SECONDS of CPU; then it prints "burned". On a line
"reap" on stdin it lets the subprocess exit, reaps it and prints "reaped"; it exits when stdin
closes.
"""

import multiprocessing
import subprocess
import sys
import time


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def worker(seconds: float, ready) -> None:
    burn(seconds)
    ready.set()
    time.sleep(600)


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    context = multiprocessing.get_context("forkserver")
    ready = context.Event()
    context.Process(target=worker, args=(seconds, ready), daemon=True).start()
    child = subprocess.Popen([sys.executable, __file__.replace("burn_tree.py", "burn_child.py"), str(seconds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    burn(seconds)
    assert child.stdout.readline() == "burned\n"
    assert ready.wait(120)
    print("burned", flush=True)
    assert sys.stdin.readline() == "reap\n"
    child.stdin.close()
    child.wait()
    print("reaped", flush=True)
    sys.stdin.read()
