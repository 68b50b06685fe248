"""Benchmarks of fused_rnn against torch.nn and the nn.*Cell loop.

``python -m benchmarks.run`` prints the table and writes JSON; ``python -m pytest benchmarks
--benchmark-only`` runs the same cases under pytest-benchmark. Both take their cases and
the callables they time from :mod:`benchmarks.cases`.
"""
