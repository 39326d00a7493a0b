"""Command-line interface: one module per command group, joined in :mod:`autotune.cli.main`."""
