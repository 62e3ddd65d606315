"""Backend adapters, one sub-package or module per ecosystem; importing this package imports no framework."""
