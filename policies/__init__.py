"""Pure decisions: the policy file's schema and loader, route planning, retry and backoff decisions."""
