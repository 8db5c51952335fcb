"""Tasks: run(cfg) -> dict of results, one module per CLI command."""
