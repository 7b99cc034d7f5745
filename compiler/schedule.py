"""The order in which a pipeline's operations run, as nested blocks.

Names are defined before use, so the IR's node order (program order) is already a valid
topological order; a ``repeat`` region's nodes are contiguous in it. This module turns
that flat order into nested :class:`Block` objects that every backend's driver walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipec.compiler import ir


@dataclass
class Block:
    """A top-level body (``loop is None``) or one ``repeat`` body; items run in order."""

    loop: ir.Loop | None
    items: list["str | Block"] = field(default_factory=list)

    def nodes(self):
        """Every node in this block and the blocks nested in it, in order."""
        for item in self.items:
            if isinstance(item, Block):
                yield from item.nodes()
            else:
                yield item

    def rebinds(self, graph: ir.IR) -> list[str]:
        """The var updates of this loop body (applied at the end of each round), or of this
        ``when`` body (applied when it has run)."""
        return [n for n in self.items if isinstance(n, str) and isinstance(graph.op(n), ir.Rebind)]

    def when_rebinds(self, graph: ir.IR) -> list[str]:
        """The var updates inside the ``when`` blocks of this loop body (at any depth, not
        inside nested loops): applied in the rounds where their block runs."""
        out = []
        for item in self.items:
            if isinstance(item, Block) and item.loop.when is not None:
                out.extend(item.rebinds(graph))
                out.extend(item.when_rebinds(graph))
        return out


def blocks(graph: ir.IR) -> Block:
    """The pipeline's top-level block."""
    loops = graph.info.loops
    root = Block(None)
    stack: list[Block] = [root]
    for node, op in graph.items():
        chain = _chain(op.loop, loops)
        # Leave blocks that do not enclose this node.
        while len(stack) > 1 and (stack[-1].loop.id not in chain):
            stack.pop()
        # Enter the loops this node is in but we are not yet.
        depth = len(stack) - 1
        for loop_id in chain[depth:]:
            block = Block(loops[loop_id])
            stack[-1].items.append(block)
            stack.append(block)
        stack[-1].items.append(node)
    _add_empty_loops(root, loops)
    return root


def _chain(loop_id: str | None, loops: dict[str, ir.Loop]) -> list[str]:
    chain = []
    while loop_id is not None:
        chain.append(loop_id)
        loop_id = loops[loop_id].parent
    return chain[::-1]


def _add_empty_loops(root: Block, loops: dict[str, ir.Loop]) -> None:
    """A ``repeat`` with an empty body has no nodes; it still appears (it does nothing)."""
    seen = {b.loop.id for b in _all_blocks(root) if b.loop is not None}
    for loop_id, loop in loops.items():
        if loop_id not in seen:
            parent = next((b for b in _all_blocks(root) if (b.loop.id if b.loop else None) == loop.parent), root)
            parent.items.append(Block(loop))


def _all_blocks(block: Block):
    yield block
    for item in block.items:
        if isinstance(item, Block):
            yield from _all_blocks(item)
