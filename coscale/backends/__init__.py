"""Backends: where replicas run. The local process backend is the embedded default;
Ray is imported lazily and only when chosen."""
