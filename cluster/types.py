"""Identifiers shared by every layer of the Raft library.

They are ``NewType`` wrappers over ``int`` so that mypy keeps a node id from being passed where a
group id is expected, while costing nothing at run time.
"""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", int)
"""A node (process) in the cluster. Positive; ``NO_NODE`` (0) means "nobody"."""

GroupId = NewType("GroupId", int)
"""One Raft group. A node hosts replicas of many groups; every message names its group."""

NO_NODE = NodeId(0)
