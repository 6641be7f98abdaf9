"""Burns argv[1] seconds of CPU, prints "burned", exits when stdin closes (tests/loadtests/burn_tree.py)."""

import sys
import time

end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
print("burned", flush=True)
sys.stdin.read()
