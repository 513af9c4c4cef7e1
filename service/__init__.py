"""The application: FastAPI service, CLI, bulk ingest and reindex jobs.

Public surface (imported from its module, so that `axm --help` loads no model code):
`service.app.create_app`, `service.settings.Settings` and `get_settings`, `service.engine.SearchEngine`
and `open_engine`, `service.jobs.ingest`, `ingest_sources` and `reindex`, and the error table
`service.errors.ERROR_TABLE`.
"""
