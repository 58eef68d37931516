"""Worker processes of one node (WORKERS)."""
