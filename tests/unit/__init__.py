"""Unit tests: pure functions, codec, storage, and the Raft core driven by scripts."""
