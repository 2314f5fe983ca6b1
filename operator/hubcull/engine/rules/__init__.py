"""Pure rules: the policy model, what a policy selects, which servers need which signal, and
the decision on a snapshot with its signals. No I/O, no clock: every rule is testable alone."""
