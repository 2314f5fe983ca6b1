"""The users' JupyterHub service of ``spec.keep``: a page (and JSON) where each user sees what
will happen to their running servers and keeps one for a while. Part of the operator layer:
it is served from the operator's event loop and writes keeps to CullPolicy status."""
