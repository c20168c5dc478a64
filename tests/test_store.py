"""Edge cases of evalkit.engine.store, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
