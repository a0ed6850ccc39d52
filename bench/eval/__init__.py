"""The retrieval evaluation: ``python -m bench.eval`` (``--help`` for the flags).

``retrieval.json`` holds memories of the users and agents of two organizations and queries
asked in one scope each, in seven categories (paraphrase, exact names and ids, temporal,
current versus superseded, no answer, another scope's data, ambiguous keywords), split into
``dev`` (for tuning) and ``test`` (for reporting). The harness loads the memories into a
real service through the client, asks every query through ``memory.search`` in each mode
the service accepts, and prints Recall@1, Recall@5, MRR and nDCG@10 per category, with the
results that came from another scope counted as leaks. docs/performance.md ("Retrieval
evaluation") says how to read it.
"""
