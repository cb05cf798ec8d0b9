"""Calibration: from stored queries and outcomes to the profiles routing serves.

Reads ``queries`` and ``outcomes``; writes embedding spaces and ``query_embeddings``, versioned
clusterings (``clusterings``, ``centroids``, ``assignments``), the materialized capability
profiles, and model-set selection. Also onboards a new model by running it on the stored
calibration queries.
"""
