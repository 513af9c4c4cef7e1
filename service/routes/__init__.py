"""HTTP routes, one module per resource: gallery items, searches, and health and metrics."""
