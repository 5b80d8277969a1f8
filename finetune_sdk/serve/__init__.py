"""Serving: the generation engine (and, later, the HTTP server program)."""
