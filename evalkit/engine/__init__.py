"""The run engine: the runner (task -> requests -> model -> records -> run.json), the run store and
its lock, the response cache, provenance and secret masking. May import evalkit's types, audio, hub,
errors, protocol and registry; never a task or adapter module (those come through the registry)."""
