"""The cluster key: the shared secret that authenticates every packet between the two nodes (SPEC §1).

The key file holds 32 random bytes written as 64 hex digits. Both nodes must hold the same
file; `mirrorctl cluster genkey` writes one, and the admin copies it to the peer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
_GENKEY = "mirrorctl cluster genkey"


class KeyFileError(Exception):
    """The cluster key is missing, malformed or readable by others; the message says how to fix it."""


def generate_key(path: Path, *, force: bool = False) -> None:
    """Writes a new random cluster key, readable by its owner only.

    Args:
        path: where to write it (normally `Paths.cluster_key`).
        force: replace an existing key. Without it an existing key is kept, because replacing it
            on one node only would cut that node off from its peer.

    Raises:
        KeyFileError: the file exists and `force` is not set.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (secrets.token_bytes(KEY_BYTES).hex() + "\n").encode()
    if not force and path.exists():
        raise KeyFileError(
            f"{path}: a cluster key already exists. Fix: keep it (copy it to the peer node), "
            f"or run `{_GENKEY} --force` and copy the new key to both nodes."
        )
    # Write under a temporary name created 0600 and rename, so the key is never visible with
    # looser permissions nor half written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if another process created the key meanwhile: never clobber it.
            os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path}: a cluster key already exists. Fix: keep it, or use `{_GENKEY} --force`.") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_key(path: Path) -> bytes:
    """Reads the cluster key.

    Args:
        path: the key file (normally `Paths.cluster_key`).

    Returns:
        The raw key bytes (at least 32).

    Raises:
        KeyFileError: missing, unreadable, not hex, too short, or readable by group/others.
    """
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no cluster key. Fix: run `{_GENKEY}` on one node and copy {path} to the other (mode 0600)."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read the cluster key ({e}). Fix: run `{_GENKEY}` as root.") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"{path}: the cluster key is readable by other users (mode {stat.S_IMODE(st.st_mode):04o}). "
            f"Fix: chmod 600 {path} (or run `{_GENKEY} --force` if it may have leaked)."
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(
            f"{path}: the cluster key is not hex digits. Fix: run `{_GENKEY} --force` and copy it to both nodes."
        ) from None
    if len(key) < KEY_BYTES:
        raise KeyFileError(
            f"{path}: the cluster key is too short ({len(key)} bytes, need {KEY_BYTES}). "
            f"Fix: run `{_GENKEY} --force` and copy it to both nodes."
        )
    return key
