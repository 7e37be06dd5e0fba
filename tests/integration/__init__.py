"""Integration tests: real servers and processes on loopback (127.0.0.1, free ports)."""
