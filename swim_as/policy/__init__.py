"""Policy (D8): which workload may get which scopes, audiences and lifetime."""
