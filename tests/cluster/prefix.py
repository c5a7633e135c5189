"""An ordered history on the primary, and a watcher that checks the secondary only ever holds a prefix of it.

`python prefix.py write ROOT STEPS` (node1, through the mount): step i appends the line "i" to ROOT/log; every
10th step then creates the marker file m<i> holding "i", and from step 100 on also unlinks the marker made 100
steps before. No fsync: the order is all that is promised between durability points.

`python prefix.py watch ROOT STOPFILE` (node2, its copy): until STOPFILE exists, reads the log, lists the
markers, reads the log again, and checks that what it saw is a state the history went through:
- the log is the lines 0..k-1 in order, maybe followed by the start of line k;
- a listed marker m<j> was created after line j was appended: j < the lines of the second read;
- a marker whose unlink came before a line the first read saw is gone;
- a marker created before a line the first read saw, whose unlink is after every line of the second read, is there;
- a marker's content is a prefix of "j".
Prints {"samples": n, "states": distinct log lengths seen, "violations": [...]} (at most 20 violations).
"""

from __future__ import annotations

import json
import os
import sys

EVERY = 10  # a marker every EVERY steps
LIFE = 100  # a marker is unlinked LIFE steps after its creation


def write(root: str, steps: int) -> None:
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for i in range(steps):
            os.write(fd, f"{i}\n".encode())
            if i % EVERY == EVERY - 1:
                with open(os.path.join(root, f"m{i}"), "w") as f:
                    f.write(str(i))
                if i >= LIFE:
                    os.unlink(os.path.join(root, f"m{i - LIFE}"))
    finally:
        os.close(fd)


def _lines(root: str) -> tuple[int, str | None]:
    """Complete lines of the log (checked to be 0..k-1), or a violation."""
    try:
        with open(os.path.join(root, "log")) as f:
            text = f.read()
    except FileNotFoundError:
        return 0, None
    *whole, partial = text.split("\n")
    if whole != [str(i) for i in range(len(whole))]:
        return len(whole), f"log is not 0..k-1 in order: {whole[-5:]}"
    if partial and not str(len(whole)).startswith(partial):
        return len(whole), f"log ends with {partial!r} after line {len(whole) - 1}"
    return len(whole), None


def _check(root: str, states: set[int]) -> list[str]:
    k0, bad0 = _lines(root)
    states.add(k0)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        names = []
    k1, bad1 = _lines(root)
    out = [v for v in (bad0, bad1) if v]
    markers = {int(n[1:]) for n in names if n.startswith("m")}
    for j in markers:
        if j >= k1:
            out.append(f"m{j} exists but the log has only {k1} lines")
        try:
            with open(os.path.join(root, f"m{j}")) as f:
                content = f.read()
        except FileNotFoundError:
            continue  # unlinked since the listing
        if not str(j).startswith(content):
            out.append(f"m{j} holds {content!r}")
    for j in range(EVERY - 1, k0, EVERY):
        unlinked_before_k0 = j + LIFE + 1 < k0  # its unlink came before line j+LIFE+1 was appended
        if unlinked_before_k0 and j in markers:
            out.append(f"m{j} is back: its unlink came before line {j + LIFE + 1}, which the log had")
        if j + 1 < k0 and j + LIFE >= k1 and j not in markers:
            out.append(f"m{j} is missing: created before line {j + 1}, unlinked only after line {j + LIFE}")
    return out


def watch(root: str, stop: str) -> None:
    samples, violations, states = 0, [], set[int]()
    while not os.path.exists(stop):
        violations += _check(root, states)
        samples += 1
    violations += _check(root, states)
    print(json.dumps({"samples": samples + 1, "states": len(states), "violations": violations[:20]}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]))
    else:
        watch(sys.argv[2], sys.argv[3])
