"""The FUSE inode table: FUSE inode ↔ backing (st_dev, st_ino) ↔ the names it is known by.

A node knows its names as (parent FUSE inode, name) links, not as full paths, so renaming a
directory needs no update of its descendants: `path()` walks the parents. A hard-linked file has
several links; a file unlinked while still open has none (its path is None: nothing visible to
replicate). A node lives while the kernel holds lookups on it or it has open handles.

FUSE inode numbers are the backing st_ino when that is free (applications see the same inode
numbers as on the raw directory, which tools like git and rsync like), otherwise a number from a
private range. A backing inode number reused by the file system while the kernel still knows the
old, deleted node gets a fresh FUSE inode, so the kernel never sees one nodeid change identity.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

__all__ = ["ROOT_INODE", "InodeTable", "Node"]

ROOT_INODE = 1  # pyfuse3.ROOT_INODE, fixed by the FUSE protocol
_PRIVATE_BASE = 1 << 62

Link = tuple[int, bytes]


@dataclass(eq=False)
class Node:
    """One inode known to the kernel."""

    ino: int
    key: tuple[int, int]  # backing (st_dev, st_ino)
    kind: int  # stat.S_IFMT of the backing file
    links: set[Link] = field(default_factory=set)
    lookups: int = 0
    opens: int = 0
    children: int = 0  # known dentries in this directory
    # xattr names getxattr found absent, answered without a syscall until a setxattr/removexattr on this
    # node (every change goes through us; a new file, even on a reused inode number, gets a new node).
    no_xattrs: set[bytes] = field(default_factory=set)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR


class InodeTable:
    """Maps FUSE inodes to backing inodes and names; all methods are fast and never block."""

    def __init__(self, root: os.stat_result) -> None:
        node = Node(ROOT_INODE, (root.st_dev, root.st_ino), stat.S_IFDIR, lookups=1)
        self._nodes: dict[int, Node] = {ROOT_INODE: node}
        self._by_key: dict[tuple[int, int], Node] = {node.key: node}
        self._dentries: dict[Link, Node] = {}
        self._root_dev = root.st_dev
        self._next_private = _PRIVATE_BASE

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node:
        """The node of a FUSE inode; KeyError if the kernel names one we forgot (never expected)."""
        return self._nodes[ino]

    def path(self, ino: int) -> bytes | None:
        """One relative path of the inode (b"" for the root), or None if it has no name left."""
        parts: list[bytes] = []
        node = self._nodes[ino]
        while node.ino != ROOT_INODE:
            if not node.links:
                return None
            parent, name = min(node.links)  # deterministic among hard links
            parts.append(name)
            node = self._nodes[parent]
        return b"/".join(reversed(parts))

    def child_path(self, parent: int, name: bytes) -> bytes | None:
        """The relative path of `name` in directory `parent`, None if that directory was removed."""
        base = self.path(parent)
        if base is None:
            return None
        return base + b"/" + name if base else name

    def child(self, parent: int, name: bytes) -> Node | None:
        """The node known under (parent, name), if the kernel learnt it through us."""
        return self._dentries.get((parent, name))

    def learn(self, parent: int, name: bytes, st: os.stat_result, *, lookup: bool = True) -> Node:
        """Records that (parent, name) is the backing file `st` and counts one kernel lookup.

        Call it exactly once per reply that hands an entry to the kernel (lookup, create, mkdir,
        mknod, symlink, link, readdirplus entries); with lookup=False to record a name only.
        """
        node = self._node_for(st)
        if self._dentries.get((parent, name)) is not node:
            self._remove((parent, name))
            self._add((parent, name), node)
        if lookup:
            node.lookups += 1
        return node

    def unlinked(self, parent: int, name: bytes) -> Node | None:
        """Forgets the name (parent, name) after an unlink/rmdir; returns the node it named."""
        return self._remove((parent, name))

    def renamed(self, old: Link, new: Link, *, exchange: bool = False) -> None:
        """Moves a name after a successful rename (or swaps two names for RENAME_EXCHANGE)."""
        moving = self._dentries.get(old)
        target = self._dentries.get(new)
        if target is not None and target is not moving:
            self._remove(new, free=not exchange)
            if exchange:
                self._remove(old, free=False)
                self._add(old, target)
        if moving is not None:
            if self._dentries.get(old) is moving:
                self._remove(old, free=False)
            self._add(new, moving)

    def forget(self, ino: int, nlookup: int) -> None:
        """The kernel dropped `nlookup` references to `ino`."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - nlookup)
        self._maybe_free(node)

    def opened(self, ino: int) -> Node:
        node = self._nodes[ino]
        node.opens += 1
        return node

    def closed(self, node: Node) -> None:
        node.opens -= 1
        self._maybe_free(node)

    def _node_for(self, st: os.stat_result) -> Node:
        key = (st.st_dev, st.st_ino)
        kind = stat.S_IFMT(st.st_mode)
        node = self._by_key.get(key)
        # A node with a name or an open handle is certainly this very file (its inode number cannot have
        # been reused while it is alive); one kept only by kernel lookups may be a dead file's number.
        if node is not None and node.kind == kind and (node.links or node.opens or node.ino == ROOT_INODE):
            return node
        if node is not None:
            # The backing inode number was reused (the old file is deleted but the kernel still holds
            # its node): detach the old node from the key so the new file gets a node of its own.
            del self._by_key[key]
        ino = st.st_ino
        if st.st_dev != self._root_dev or ino <= ROOT_INODE or ino >= _PRIVATE_BASE or ino in self._nodes:
            ino = self._next_private
            self._next_private += 1
        node = Node(ino, key, kind)
        self._nodes[ino] = node
        self._by_key[key] = node
        return node

    def _add(self, link: Link, node: Node) -> None:
        node.links.add(link)
        self._dentries[link] = node
        self._nodes[link[0]].children += 1

    def _remove(self, link: Link, *, free: bool = True) -> Node | None:
        node = self._dentries.pop(link, None)
        if node is None:
            return None
        node.links.discard(link)
        parent = self._nodes.get(link[0])
        if parent is not None:
            parent.children -= 1
            self._maybe_free(parent)
        if free:
            self._maybe_free(node)
        return node

    def _maybe_free(self, node: Node) -> None:
        if node.lookups > 0 or node.opens > 0 or node.ino == ROOT_INODE:
            return
        # A directory whose children are still known stays, so that their paths resolve; it is
        # freed with its last child (the kernel forgets children before their parent anyway).
        if node.children > 0:
            return
        del self._nodes[node.ino]
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        for link in list(node.links):
            self._remove(link, free=False)
