"""HTTP: routes, ASGI middleware and error rendering."""
