"""The resync benchmark's trees, made inside a lab node as `python treegen.py CMD DIR ARGS...`.

    make DIR COUNT MIN MAX SEED       COUNT files of MIN..MAX bytes (log-uniform sizes), 20 files a
                                      directory, incompressible data; fsync'ed
    change DIR FILES_PCT BYTES_PCT SEED
                                      overwrite BYTES_PCT percent of the tree's bytes in place, spread
                                      over FILES_PCT percent of its files (64 KiB pieces at random
                                      offsets); fsync'ed

Each prints one JSON line: {"files": N, "bytes": B} (what it wrote or changed). Only the standard
library is used: the script runs under any Python 3.11 inside the node.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

PIECE = 64 << 10
PER_DIR = 20
_DATA = random.Random(7).randbytes(4 << 20)


def _data(rng: random.Random, size: int) -> bytes:
    start = rng.randrange(len(_DATA) - min(size, len(_DATA)) + 1)
    out = bytearray()
    while len(out) < size:
        out += _DATA[start : start + size - len(out)]
        start = 0
    return bytes(out)


def make(root: str, count: int, low: int, high: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        d = os.path.join(root, f"d{i // PER_DIR:04d}")
        os.makedirs(d, exist_ok=True)
        size = int(math.exp(rng.uniform(math.log(low), math.log(high))))
        with open(os.path.join(d, f"f{i:06d}.bin"), "wb") as f:
            f.write(_data(rng, size))
            os.fsync(f.fileno())
        total += size
    return {"files": count, "bytes": total}


def _files(root: str) -> list[tuple[str, int]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            found.append((path, os.path.getsize(path)))
    return found


def change(root: str, files_pct: int, bytes_pct: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    files = _files(root)
    total = sum(size for _p, size in files)
    chosen = rng.sample(files, max(1, len(files) * files_pct // 100))
    budget = total * bytes_pct // 100
    each = max(1, budget // len(chosen))
    changed = 0
    for path, size in chosen:
        with open(path, "r+b") as f:
            left = min(each, size)
            while left > 0:
                n = min(PIECE, left)
                f.seek(rng.randrange(max(1, size - n + 1)))
                f.write(_data(rng, n))
                left -= n
                changed += n
            os.fsync(f.fileno())
    return {"files": len(chosen), "bytes": changed}


def main(argv: list[str]) -> int:
    commands = {"make": make, "change": change}
    if len(argv) < 2 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, root, *numbers = argv
    os.makedirs(root, exist_ok=True)
    print(json.dumps(commands[cmd](root, *(int(n) for n in numbers))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
