"""Trust bundles per trust domain and their sources (D3)."""
