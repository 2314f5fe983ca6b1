"""The operator layer: kopf handlers, the per-policy controller, the few Kubernetes API calls
hubcull makes itself, and the operator's metrics. It imports the engine, never the other way.
"""
