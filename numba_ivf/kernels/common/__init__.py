"""Shared pieces: top-k heaps and reservoirs, the id hash map."""
