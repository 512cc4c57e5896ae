"""Grant types served at the token endpoint."""
