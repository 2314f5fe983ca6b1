"""The sweep engine: policy model, Hub client, decisions, sweep and status.

Nothing in this package imports kopf or a Kubernetes client: ``hubcull sweep`` runs it with
no cluster at all, and the operator (:mod:`hubcull.k8s`) feeds it what only Kubernetes knows
(Secrets, pods) through small interfaces.
"""
