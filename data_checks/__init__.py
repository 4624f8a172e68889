"""data_checks layer of fleetscore (see docs/architecture.md)."""
