"""The AgentMem benchmark: ``python -m bench`` (``--help`` for the flags).

Every AgentMem workload is measured beside a raw baseline (plain nats-py, aiosqlite) and a
peer (the ``eventsourcing`` library) in the same run, on the same nats-server settings, and
reported as a ratio: absolute figures on a shared 2-core machine drift by 10-20%.
"""
