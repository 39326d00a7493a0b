"""Engine backends: one module per engine, all behind the interface in :mod:`autotune.backends.base`."""
