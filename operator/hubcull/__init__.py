"""hubcull: cull idle JupyterHub servers by CullPolicy resources."""

__version__ = "0.1.0"
