"""OAuth clients: the model, RFC 7591 metadata rules and registration."""
