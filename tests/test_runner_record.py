"""Edge cases of evalkit.engine.runner: the run record, run id, rescore, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
