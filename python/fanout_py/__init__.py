"""fanout leaves and mergers in Python, written against proto/proto/fanout/** alone.

- serving.py: what every Python fanout server shares (health, drain, announce line, keepalive).
- leafkit.py / mergekit.py: the Leaf and Merger contracts' common rules.
- sqlite_leaf.py + topk_merger.py: the search workload on SQLite FTS5.
- knn_leaf.py + knn_merger.py (+ knn_data.py): brute-force k nearest neighbours.

Generated stubs live in fanout_py/_generated (see stubs.py); import them through
``fanout_py.stubs`` or after calling ``fanout_py.stubs.ensure()``.
"""
