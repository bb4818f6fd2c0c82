"""High availability of the local cluster: standbys, fencing, failover, switchover, rejoin, the monitor.

Each node (coord, w1, …) is a group of members: one primary and its streaming standbys (made with
pg_basebackup and a replication slot, synchronous by default so that an acknowledged commit is on two
servers). The monitor checks every primary about once a second. When one has not answered for
``timeout`` seconds it fences it, promotes the standby that replayed the most WAL, and for a worker
repoints the coordinator's foreign server. Every decision is written to ``events.jsonl`` in the
cluster directory.
"""
