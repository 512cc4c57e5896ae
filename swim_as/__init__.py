"""swim-as: an OAuth 2.0 authorization server for SPIFFE workloads."""

__version__ = "0.1.0"
