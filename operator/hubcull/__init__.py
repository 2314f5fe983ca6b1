"""hubcull: cull idle JupyterHub servers by CullPolicy resources."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hubcull")  # the installed package's, i.e. pyproject.toml's
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
