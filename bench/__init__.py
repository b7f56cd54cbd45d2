"""The sidecar benchmark and the bench scripts beside it, one package.

Run from the repository root as modules (``python -m bench``, ``python -m bench.floors``,
...), which is what ``bench/run`` and ``bench/soak`` do; see bench/README.md. The
``bench/run`` benchmark is in parts: ``harness`` (processes and /proc readings),
``services`` (the servers it measures), ``load`` (wrk and its samples), ``scenarios``
(the throughput scenarios), ``throughput`` and ``experiments`` (what it measures),
``report`` (the markdown report) and ``__main__`` (the entry point).
The ``bench/soak`` chaos soak is in parts too: ``soak`` (the entry point), ``soak_rig`` and
``soak_cluster`` (its processes), ``soak_ledger``, ``soak_load``, ``soak_faults``,
``soak_checks``, ``soak_resources`` and ``soak_report``.
"""
