"""The peers of ``make bench-peers``: Huey, Dramatiq and Celery task modules and their driver.

Everything here runs in the peers' own virtualenv (``.bench/peers-venv``, from
``requirements.txt``), never in DTQ's: DTQ's code does not import these
modules, and ``bench.compare`` only starts ``bench.peers.driver`` as a
subprocess. Each ``*_app`` module is what that peer's worker command loads, so
it reads the Redis address from ``BENCH_REDIS_URL`` at import time: the worker
CLIs of all three import a module path and offer no other way in.
"""
