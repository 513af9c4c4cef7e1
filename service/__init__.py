"""The application: FastAPI service, CLI, bulk ingest and reindex jobs."""
