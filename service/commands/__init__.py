"""`axm` subcommands of the service: serve, search, ingest, reindex; each exposes `add_arguments` and `run`."""
