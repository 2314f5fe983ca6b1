"""The pure rules: the policy model, which servers are in scope, and what to decide."""
