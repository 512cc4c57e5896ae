"""Access tokens: RFC 9068 JWT profile, certificate confirmation (RFC 8705)."""
