"""Client authentication: one authenticator per registered method (D2)."""
