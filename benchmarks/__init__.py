"""Benchmarks of hubcull against jupyterhub-idle-culler on a real JupyterHub.

Run them with ``benchmarks/run`` (or ``.venv/bin/python -m benchmarks.run`` after
``scripts/setup``); ``docs/performance.md`` explains the scenarios and holds the results.
Nothing here is imported by the test suite, and no timing is ever asserted in CI.
"""
