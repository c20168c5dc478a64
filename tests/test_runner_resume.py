"""Edge cases of evalkit.engine.runner: pending work, resume, records, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
