"""The strategy engine: the strategy contract, the runner, built-in strategies."""
