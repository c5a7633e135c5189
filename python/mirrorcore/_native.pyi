"""Type stubs for the Rust extension `mirrorcore._native` (checked by `mypy.stubtest`)."""

__all__ = ["version"]

def version() -> str: ...
