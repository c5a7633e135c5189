"""A mixed file-system workload run inside a lab node (as `python workload.py ROOT SEED COUNT`).

Each process works in its own subdirectory with a seeded random mix of creates, writes,
appends, truncates, renames, links, symlinks, chmods, xattrs, removals and fsyncs, and
ends with an fsync of every file it keeps: a durability point covering all it did.
"""

from __future__ import annotations

import os
import random
import sys


def run(root: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    base = os.path.join(root, f"w{seed}")
    os.makedirs(base, exist_ok=True)
    files: list[str] = []
    dirs = [base]
    for step in range(count):
        kind = rng.choice("cccwwwaatrllsmxdfu")
        if kind == "c" or not files:
            path = os.path.join(rng.choice(dirs), f"f{step}")
            with open(path, "wb") as f:
                f.write(rng.randbytes(rng.randrange(0, 70000)))
            files.append(path)
        elif kind == "w":
            path = rng.choice(files)
            with open(path, "r+b") as f:
                f.seek(rng.randrange(0, 200000))
                f.write(rng.randbytes(rng.randrange(1, 9000)))
        elif kind == "a":
            with open(rng.choice(files), "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 3000)))
        elif kind == "t":
            os.truncate(rng.choice(files), rng.randrange(0, 50000))
        elif kind == "r":
            old = files.pop(rng.randrange(len(files)))
            new = os.path.join(rng.choice(dirs), f"r{step}")
            os.rename(old, new)
            files.append(new)
        elif kind == "l":
            new = os.path.join(rng.choice(dirs), f"h{step}")
            os.link(rng.choice(files), new)
            files.append(new)
        elif kind == "s":
            os.symlink(os.path.basename(rng.choice(files)), os.path.join(rng.choice(dirs), f"s{step}"))
        elif kind == "m":
            os.chmod(rng.choice(files), rng.choice([0o600, 0o644, 0o755, 0o640]))
        elif kind == "x":
            os.setxattr(rng.choice(files), f"user.k{rng.randrange(3)}", rng.randbytes(rng.randrange(1, 40)))
        elif kind == "d":
            path = os.path.join(rng.choice(dirs), f"d{step}")
            os.mkdir(path)
            dirs.append(path)
        elif kind == "u":
            os.unlink(files.pop(rng.randrange(len(files))))
        elif kind == "f":
            with open(rng.choice(files), "rb") as f:
                os.fsync(f.fileno())
    for path in files:
        with open(path, "rb") as f:
            os.fsync(f.fileno())


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
