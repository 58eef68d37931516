"""Running calls: planning containers (pure), admitting and running calls (the agent)."""
