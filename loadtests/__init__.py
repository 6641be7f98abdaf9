"""Load tests and benchmarks of the avserve gateway: `python -m loadtests.bench` (`avserve bench`),
the locust file, the request mix, and micro-benchmarks. See loadtests/README.md.

Importing this package imports nothing: loadtests.clips and loadtests.locustfile must also load
in the separate locust environment (.venv-loadtest), which has only locust, numpy and PyAV.
"""
