"""Great Expectations suites, one module per dataset, built from the typed config.

Each module has ``TABLE`` (the raw table it reads, or None for a published dataset: instances, pin embeddings) and
``expectations(cfg) -> list`` of GX 1.x expectation objects.
"""

SUITES = ("raw_impressions", "raw_actions", "pins", "users", "instances", "pin_embeddings")
