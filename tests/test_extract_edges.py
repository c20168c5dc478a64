"""Edge cases of evalkit.protocol.extract, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
