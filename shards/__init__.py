"""Placement (consistent-hash ring), the chat state machine and the shard node server.

Not built yet: this package only reserves the name.
"""
