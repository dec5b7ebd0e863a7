"""trading-backend: a multi-user, multi-broker algorithmic trading backend."""

__version__ = "0.1.0"
