"""Signing keys: generation, sealing, rotation (D7)."""
