"""The benchmark workloads W1-W3 (:mod:`bench.workloads`), run through jaxmeta's public API.

``python -m bench.run`` from a checkout, or ``jaxmeta bench`` from any install
(this folder installs as ``jaxmeta.bench`` through the link ``jaxmeta/bench ->
../bench``), prints one JSON line per measurement; ``python -m bench.compare``
runs jaxmeta and the PyTorch peers (``bench/peers``) one after the other and
prints their ratios. Modules import each other relatively, so both names work.
See ``bench/README.md`` in the source repository.
"""
