"""Benchmarks of whatsup side by side with the ceiling (issue 6).

``python3 -m ops.bench run [--quick] [--scenario NAME ...] [--out FILE]``

* ``__main__`` — the command: placement, progress bar, table, JSON record;
* ``scenarios`` — direct, fanout, offline, idle (reload plugs in there);
* ``loadgen`` — the load generator process (epoll, pipelined raw frames);
* ``forwarder``, ``actor_router`` — baselines (a) and (b), with ``baseline``'s shared handshake;
* ``receipt_router`` — baseline (c): (b) doing whatsup's acks and receipts (the realistic scenario);
* ``targets`` — starting servers and load generators on their cores; ``report`` — what is printed and kept.
"""
