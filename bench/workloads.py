"""The replication benchmark's workloads, run inside a lab node as `python workloads.py NAME DIR ARGS...`.

Each workload times only its own measured phase (the layout of a file to overwrite is not timed)
and prints one JSON line: {"ops": N, "bytes": B, "seconds": S}.

    seq DIR TOTAL           sequential 1 MiB writes of TOTAL bytes to DIR/seq.dat, one fsync at the end
    randsync DIR SIZE COUNT COUNT random 4 KiB writes in DIR/randsync.dat (SIZE bytes), fsync after each
    randbuf DIR SIZE COUNT WRITERS
                            COUNT random 4 KiB buffered writes in all, spread over WRITERS processes,
                            each in its own file DIR/randbuf.I.dat of SIZE/WRITERS bytes; fsync at the end
    files DIR COUNT         create COUNT files of 4 KiB in DIR/files, then delete them all (and the directory)

The files written stay in place (the caller compares them between nodes, then deletes them). Only the
standard library is used: the script runs under any Python 3.11 inside the node.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
import time

MIB = 1 << 20
BLOCK = 4096
_PATTERN = random.Random(42).randbytes(MIB)  # incompressible data, made once outside every timed phase


def _layout(path: str, size: int) -> None:
    """Writes the file to overwrite in full and makes it durable, as fio lays out its files first."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        chunk = memoryview(_PATTERN)
        done = 0
        while done < size:
            done += os.write(fd, chunk[: min(MIB, size - done)])
        os.fsync(fd)
    finally:
        os.close(fd)


def seq(root: str, total: int) -> dict[str, float]:
    path = os.path.join(root, "seq.dat")
    chunk = memoryview(_PATTERN)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < total:
            done += os.write(fd, chunk[: min(MIB, total - done)])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    return {"ops": -(-total // MIB), "bytes": total, "seconds": seconds}


def _offsets(seed: int, size: int, count: int) -> list[int]:
    rng = random.Random(seed)
    blocks = size // BLOCK
    return [rng.randrange(blocks) * BLOCK for _ in range(count)]


def _blocks(count: int) -> list[memoryview]:
    view = memoryview(_PATTERN)
    return [view[(i * BLOCK) % MIB : (i * BLOCK) % MIB + BLOCK] for i in range(count)]


def randsync(root: str, size: int, count: int) -> dict[str, float]:
    path = os.path.join(root, "randsync.dat")
    _layout(path, size)
    offsets, blocks = _offsets(1, size, count), _blocks(count)
    fd = os.open(path, os.O_WRONLY)
    try:
        start = time.perf_counter()
        for off, data in zip(offsets, blocks, strict=True):
            os.pwrite(fd, data, off)
            os.fsync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"ops": count, "bytes": count * BLOCK, "seconds": seconds}


def _buffered_writer(path: str, size: int, count: int, seed: int, ready) -> None:
    """One writer process: lays out its file, waits for the others, writes, fsyncs once."""
    _layout(path, size)
    offsets, blocks = _offsets(seed, size, count), _blocks(count)
    fd = os.open(path, os.O_WRONLY)
    try:
        ready.wait()  # a multiprocessing Barrier: every writer starts together
        for off, data in zip(offsets, blocks, strict=True):
            os.pwrite(fd, data, off)
        os.fsync(fd)
    finally:
        os.close(fd)


def randbuf(root: str, size: int, count: int, writers: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers + 1)
    each = size // writers // BLOCK * BLOCK
    shares = [count // writers + (1 if i < count % writers else 0) for i in range(writers)]
    procs = [
        ctx.Process(
            target=_buffered_writer, args=(os.path.join(root, f"randbuf.{i}.dat"), each, shares[i], 100 + i, barrier)
        )
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=600)  # every writer has laid out its file: the measured phase begins
    start = time.perf_counter()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - start
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise SystemExit(f"randbuf: writers exited with {failed}")
    return {"ops": count, "bytes": count * BLOCK, "seconds": seconds}


def files(root: str, count: int) -> dict[str, float]:
    base = os.path.join(root, "files")
    data = _PATTERN[:BLOCK]
    start = time.perf_counter()
    os.mkdir(base)
    names = [os.path.join(base, f"f{i:06d}") for i in range(count)]
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    for name in names:
        os.unlink(name)
    os.rmdir(base)
    seconds = time.perf_counter() - start
    return {"ops": count, "bytes": count * BLOCK, "seconds": seconds}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    name, root, *sizes = argv
    numbers = [int(s) for s in sizes]
    os.makedirs(root, exist_ok=True)
    workloads = {"seq": seq, "randsync": randsync, "randbuf": randbuf, "files": files}
    if name not in workloads:
        print(f"unknown workload {name!r}; one of {', '.join(workloads)}", file=sys.stderr)
        return 2
    result = workloads[name](root, *numbers)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
