"""Operator logs, audit events and in-memory counters."""
