"""Signals besides the Hub's own activity: the servers' kernels (probes), their pods, and what
Prometheus says about the pods. Each can fail; what a failure means is decided by the sweep."""
