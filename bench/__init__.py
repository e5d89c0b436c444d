"""The benchmark workloads W1-W3 of ``BENCH.md``, run through jaxmeta's public API.

``python -m bench.run`` (or ``jaxmeta bench`` in a source checkout) prints one JSON
line per measurement; ``python -m bench.compare`` runs jaxmeta and the PyTorch
peers (``bench/peers``) one after the other and prints their ratios. See
``bench/README.md``.
"""
