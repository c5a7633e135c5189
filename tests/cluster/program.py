"""Runs a list of file-system operations (JSON on stdin) under a root, as an application would.

Used by the Hypothesis replication test inside a lab node: `python program.py ROOT < ops.json`.
An operation that fails (a name that does not exist at that moment, a directory not empty…)
is skipped, as it would fail on a local disk: what matters is that both nodes end equal.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2), which Python's os module lacks."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def apply(root: str, op: list) -> None:
    kind, args = op[0], op[1:]

    def at(name: str) -> str:
        return os.path.join(root, name)

    if kind == "write":
        fd = os.open(at(args[0]), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, bytes([args[2]]) * args[3], args[1])
        finally:
            os.close(fd)
    elif kind == "append":
        with open(at(args[0]), "ab") as f:
            f.write(bytes([args[1]]) * args[2])
    elif kind == "truncate":
        os.truncate(at(args[0]), args[1])
    elif kind == "mkdir":
        os.mkdir(at(args[0]))
    elif kind == "rmdir":
        os.rmdir(at(args[0]))
    elif kind == "unlink":
        os.unlink(at(args[0]))
    elif kind == "rename":
        os.rename(at(args[0]), at(args[1]))
    elif kind == "link":
        os.link(at(args[0]), at(args[1]))
    elif kind == "symlink":
        os.symlink(args[0], at(args[1]))  # the target is stored as given, dangling or not
    elif kind == "chmod":
        if not os.path.islink(at(args[0])):
            os.chmod(at(args[0]), args[1])
    elif kind == "chown":
        os.chown(at(args[0]), args[1], args[2], follow_symlinks=False)
    elif kind == "utime":
        os.utime(at(args[0]), ns=(args[1], args[2]), follow_symlinks=False)
    elif kind == "setxattr":
        os.setxattr(at(args[0]), f"user.{args[1]}", args[2].encode(), follow_symlinks=False)
    elif kind == "removexattr":
        os.removexattr(at(args[0]), f"user.{args[1]}", follow_symlinks=False)
    elif kind == "fsync":
        fd = os.open(at(args[0]), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif kind == "mmap":
        with open(at(args[0]), "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size:
                with mmap.mmap(f.fileno(), size) as m:
                    m[args[1] % size] = args[2]
                    m.flush()
    elif kind == "sync_write":
        fd = os.open(at(args[0]), os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
        try:
            os.pwrite(fd, b"s" * args[2], args[1])
        finally:
            os.close(fd)
    elif kind == "fallocate":
        fd = os.open(at(args[0]), os.O_WRONLY)
        try:
            fallocate(fd, args[1], args[2], args[3])
        finally:
            os.close(fd)
    elif kind == "unlink_open":
        # Write to a file, unlink it while open, keep writing: nothing of it may remain anywhere.
        fd = os.open(at(args[0]), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.unlink(at(args[0]))
            os.pwrite(fd, b"gone", 0)
        finally:
            os.close(fd)
    else:
        raise ValueError(f"unknown operation {kind}")


def main() -> int:
    root = sys.argv[1]
    failed = 0
    for op in json.load(sys.stdin):
        try:
            apply(root, op)
        except OSError:
            failed += 1
    print(json.dumps({"failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
