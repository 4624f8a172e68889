"""scoring layer of fleetscore (see docs/architecture.md)."""
