"""The run engine: the runner (task -> requests -> model -> records -> run.json), the run store and
its lock, the response cache, fingerprints, secret masking, strategies and the audio check. May import
evalkit's types, audio, hub, errors, jsonio, protocol, registry and the results' pure functions of
records (metrics, diagnostics); never a task or adapter module (those come through the registry)."""
