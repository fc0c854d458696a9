"""One module per scenario; each has ``steps(config) -> int`` (for the ETA) and
``run(env, config, progress) -> dict`` returning raw samples plus summaries."""
