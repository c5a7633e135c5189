"""mirrorcore: two-node high availability with real-time file replication and automatic failover."""

from mirrorcore._native import version as _native_version

__version__ = "0.1.0"

__all__ = ["__version__", "native_version"]


def native_version() -> str:
    """Returns the version of the Rust extension, which must match `__version__`."""
    return _native_version()
