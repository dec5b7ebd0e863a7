"""Compatibility package for the seed's import paths (``app.core`` -> ``trading_backend.core``)."""
