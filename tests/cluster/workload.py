"""File-system workloads run inside a lab node.

`python workload.py ROOT SEED COUNT`: each process works in its own subdirectory with a seeded
random mix of creates, writes, appends, truncates, renames, links, symlinks, chmods, xattrs,
removals and fsyncs, and ends with an fsync of every file it keeps: a durability point covering
all it did.

`python workload.py --churn ROOT SEED STOPFILE COUNTFILE`: an application rewriting the files
that already exist under ROOT (writes, appends, truncates, renames, a few new files and
removals) until STOPFILE exists; COUNTFILE holds how many operations it has done so far.
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


def churn(root: str, seed: int, stop: str, count_file: str) -> None:
    rng = random.Random(seed)
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names if not n.startswith("link"))
    done = 0
    while not os.path.exists(stop):
        path = rng.choice(files)
        kind = rng.random()
        if kind < 0.6:
            with open(path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(rng.randrange(0, size + 4096))
                f.write(rng.randbytes(rng.randrange(1, 20000)))
        elif kind < 0.7:
            with open(path, "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 5000)))
        elif kind < 0.75:
            os.truncate(path, rng.randrange(0, os.stat(path).st_size + 1))
        elif kind < 0.85:
            new = os.path.join(os.path.dirname(path), f"r{seed}_{done}")
            os.rename(path, new)
            files[files.index(path)] = new
        elif kind < 0.92:
            new = os.path.join(os.path.dirname(path), f"n{seed}_{done}")
            with open(new, "wb") as f:
                f.write(rng.randbytes(rng.randrange(0, 30000)))
            files.append(new)
        elif kind < 0.95 and len(files) > 10:
            files.remove(path)
            os.unlink(path)
        else:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        done += 1
        if done % 20 == 0:
            _write_count(count_file, done)
    for path in files:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    _write_count(count_file, done)


def _write_count(path: str, count: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(count))
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    if sys.argv[1] == "--churn":
        churn(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
