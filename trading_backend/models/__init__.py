"""Seed import paths (``app.models`` -> ``trading_backend.models``)."""
