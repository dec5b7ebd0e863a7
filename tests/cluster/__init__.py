"""Multi-process tests of production mode (issue #7)."""
