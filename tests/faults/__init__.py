"""Fault injection for tests: a lossy TCP proxy in front of a real redis-server."""
