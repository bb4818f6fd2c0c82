"""The counters of one router process (written to its status file, summed by 'pgfleet router status')."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RouterStats:
    clients_total: int = 0
    clients_active: int = 0
    queries: int = 0  # simple-protocol Query messages
    executes: int = 0  # extended-protocol Execute messages
    cancels: int = 0  # cancel requests forwarded to a server (counted by the process holding the session)
    protocol_errors: int = 0
    routed: int = 0  # statements sent straight to a worker
    routing_fallbacks: int = 0  # routable statements sent to the coordinator after all (worker refused the role, …)
    pinned_sessions: int = 0  # sessions kept on the coordinator because of session state
    sessions_logged_in_again: int = 0  # idle sessions carried over a lost coordinator connection (reconnect.py)
    # transactions (simple protocol; see txn.py)
    worker_transactions: int = 0  # transactions that ran on one worker (plain COMMIT or ROLLBACK there)
    coordinator_transactions: int = 0  # transactions the router began on the coordinator (first statement not routable)
    two_phase_commits: int = 0  # transactions committed on several workers with PREPARE / COMMIT PREPARED
    coordinator_parts: int = 0  # reference-table writes the coordinator ran in a router transaction (refpart.py)
    reference_copies_written: int = 0  # of those, written on every copy by the router itself (refcopies.py)
    keys_drawn: int = 0  # distribution keys drawn from the coordinator's sequences for INSERTs (keyfill.py)
    rows_got_first: int = 0  # rows of INSERT … SELECT of constants got first, inserted as VALUES (rowsource.py)
    recovered_commits: int = 0  # prepared transactions recovery committed (the decision was 'commit')
    recovered_aborts: int = 0  # prepared transactions recovery rolled back (no decision: 'abort' written)
    in_doubt: int = 0  # prepared router transactions recovery saw unresolved in its last pass (a gauge)
