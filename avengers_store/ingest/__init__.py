"""Ingest: getting queries, outcomes and models into the store.

Reads user files (JSONL, CSV, Parquet) and wide research tables; writes ``datasets``,
``queries`` (one row per distinct normalised text within a dataset and split), ``outcomes`` and
the model pool (``models``). Each file is one transaction: a bad row names file, row and column
and changes nothing.
"""
