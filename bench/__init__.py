"""The AgentMem benchmark: ``python -m bench`` (``--help`` for the flags).

Every AgentMem workload is measured beside a raw baseline (plain nats-py, sqlite3) and a
peer (the ``eventsourcing`` library) in the same run, on the same nats-server settings, and
reported as a ratio: absolute figures on a shared 2-core machine drift by 10-20%. The service
and the raw responders each run in a process of their own; only the clients run in the bench
process. ``python -m bench.readpath`` is the micro-measurement behind the store's read path;
``python -m bench.eval`` measures search quality (``bench/eval``), not speed.
"""
