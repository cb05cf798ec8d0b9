"""Reliability tests: properties that must hold for any input, not just the examples we thought of.

- ``test_ingest_fuzz``: the importers (``load-table``, ``dataset add``, ``outcomes import``, ``embed
  --from-npy``) against generated CSV, JSONL, Parquet and ``.npy`` files, well-formed or corrupted
  byte by byte. Every file is either loaded in full (the store then holds exactly what a reference
  reader finds in it) or refused with an ``InputError`` that names the file and the row, line or
  column, and a refused file changes nothing.

- ``test_gateway_fuzz``: the gateway against generated chat, route and feedback bodies, valid
  and broken (encodings, lone surrogates, depth, sizes, wrong types, unknown fields), beside a
  steady stream of valid requests: valid ones are answered 200, broken ones a 4xx in the OpenAI
  error shape, nothing is a 5xx and ``/health`` stays up.

The other modules are fault cases with measured bounds (crashes, restarts, endpoint faults,
isolation, secrets, the embedded server, the route-log spool, scale-out); docs/reliability.md
reports them. They run with the rest of the suite (``make test``) on the real embedded
PostgreSQL. Hypothesis is derandomized (the same examples on every run, no example database) and
bounded: 60 examples per property, a deadline per example, about a minute per fuzzer. Run only
these with ``python -m pytest -q tests/reliability``; ``HYPOTHESIS_PROFILE=thorough`` runs more
examples (500 per property) with fresh randomness.
"""
