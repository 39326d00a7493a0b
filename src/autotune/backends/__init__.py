"""Engine backends: one module per engine, behind the interface in :mod:`.base`."""
