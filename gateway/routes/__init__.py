"""HTTP endpoints, grouped by listener."""
