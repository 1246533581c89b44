"""Executors run jobs in isolated child processes (local now; a cluster executor later)."""
