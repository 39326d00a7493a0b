"""What is not a chat: pulling, unloading, pre-flight checks and inventory, done one way.

The HTTP faces, the terminal chat and the command line all call these; none of them
reaches into the engines (``backends/``) or the model knowledge (``models/``) itself. An
operation that touches an engine goes through admission and telemetry like a chat turn
(:func:`autotune.pipeline.admitted.admitted`).
"""
