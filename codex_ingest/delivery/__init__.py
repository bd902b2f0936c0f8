"""Push delivery: stored events forwarded to the team's own HTTP endpoints."""
