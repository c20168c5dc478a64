"""Model adapters. Each module imports its heavy dependencies lazily (inside methods),
so that `evalkit list models` never imports torch, transformers or vllm."""
