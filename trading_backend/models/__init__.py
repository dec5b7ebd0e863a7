"""Compatibility package for the seed's import paths (``app.models`` -> ``trading_backend.models``)."""
