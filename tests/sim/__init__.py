"""Deterministic simulation: many replicas, virtual time, a seeded faulty network."""
