"""Serving a run over HTTP."""
