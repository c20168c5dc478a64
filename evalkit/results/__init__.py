"""Results: metrics and confidence intervals, leaderboards, regression checks, shard merging, plots.
Pure functions of run records; may import the engine's store and provenance, the protocol and the
types, never a task or adapter module (merge reaches tasks through the registry)."""
