"""Beside the request path: where models come from, and their lifecycle."""
