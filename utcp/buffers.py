"""A connection's send and receive buffers, and the memory they charge an endpoint.

The buffers know bytes and sequence numbers, nothing of segments, windows or states:
what may be sent or offered is the connection's to decide (`utcp.connection`).
"""

from __future__ import annotations

import collections
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from typing import Any, Final, SupportsIndex, TypeVar

# Real memory a received piece costs beyond its payload, measured with tracemalloc on
# CPython 3.11 (64-bit): a piece in order is a bytes object (33-byte header, allocator
# rounding) and a deque slot, about 42 bytes for a 1-byte piece, 57 for a large one; one
# held out of order adds a (seq, bytes) tuple, a large int and a list slot, about 134 and
# 161, and, when it stands alone, a range of `ReceiveBuffer.held` (two large ints and two
# list slots): about 182 for a 1-byte piece. Charging payload bytes alone let 1-byte
# pieces cost ~160 times their charge.
RCV_PIECE_OVERHEAD: Final = 64
OOO_PIECE_OVERHEAD: Final = 184
# What every connection may hold and send whatever the endpoint's memory (as Linux's
# tcp_rmem[0] / tcp_wmem[0]): under pressure windows and flights shrink to it, over the
# limit a connection holding more takes nothing more, so each keeps making progress.
MEMORY_FLOOR: Final = 64 * 1024
_GLUE_BELOW: Final = 16384  # read_pieces glues received pieces smaller than this into one
# In-order pieces smaller than this are glued as they come, into a bytearray of up to
# _GLUED_UP_TO: a peer sending a byte a segment made an object and a deque slot of each,
# and 4 MiB of window held 4 million of them (about 270 MB for 4 MiB of data).
_SMALL_PIECE: Final = 512
_GLUED_UP_TO: Final = 65536
_OWN_CHUNK: Final = 65536  # a write this large is a send-buffer chunk of its own


class ReassemblyBudget:
    """Out-of-order pieces all connections of one endpoint may hold together, charged
    as real memory (payload + OOO_PIECE_OVERHEAD each)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class MemoryBudget:
    """Send and receive buffers of all connections of one endpoint (Linux's tcp_mem).

    Below `pressure` (2/3 of `limit`, Linux's default ratio of tcp_mem[1] to [2]) nothing
    is clamped. Above it, windows offered and bytes in flight shrink to MEMORY_FLOOR per
    connection; at `limit` a received piece is dropped unless its connection holds less
    than MEMORY_FLOOR. The application's writes are never refused: the asyncio layer's
    water marks pause it once its bytes cannot leave, which a clamped flight brings about.
    """

    __slots__ = ("drops", "limit", "pressure", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pressure = limit * 2 // 3
        self.used = 0
        self.drops = 0


_T = TypeVar("_T")


try:
    from mypy_extensions import mypyc_attr as mypyc_attr
except ImportError:  # a pure-Python install need not have mypy's extensions
    def mypyc_attr(*args: object, **kwargs: object) -> Callable[[_T], _T]:  # type: ignore[misc]
        """mypyc reads its class options at compile time; at run time they do nothing."""
        return lambda cls: cls


def python_class(cls: _T) -> _T:
    """Keeps a class a plain Python class when mypyc compiles its module: any decorator
    mypyc does not know does that, and a native subclass of `deque` crashes at import
    (mypyc 1.x)."""
    return cls


@python_class
class _NoItems(list[Any]):
    """An empty list shared by every holder that has nothing to keep: an empty list is
    56 bytes, and an idle connection has several (100,000 idle connections). A holder
    swaps in a list of its own before it adds anything (`is NO_ITEMS`); a change here
    would be a bug that shared data between connections, so it fails loudly (in the
    pure-Python build: compiled code appends through the C API)."""

    def append(self, item: Any, /) -> None:
        raise RuntimeError("change to the shared empty list")

    def extend(self, items: Iterable[Any], /) -> None:
        raise RuntimeError("change to the shared empty list")

    def insert(self, index: SupportsIndex, item: Any, /) -> None:
        raise RuntimeError("change to the shared empty list")

    def __setitem__(self, key: Any, value: Any, /) -> None:
        raise RuntimeError("change to the shared empty list")

    def __delitem__(self, key: Any, /) -> None:
        raise RuntimeError("change to the shared empty list")

    # a copy of a holder shares it too: `is NO_ITEMS` must stay true of the copy
    def __copy__(self) -> _NoItems:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _NoItems:
        return self


NO_ITEMS: Final[list[Any]] = _NoItems()
_EMPTY: Final = memoryview(b"")  # an acknowledged chunk's place


@python_class
class _NoPieces(collections.deque[bytes | bytearray | memoryview]):
    """The receive buffer of every connection that holds no piece: a deque, even empty,
    keeps a 528-byte block, and an idle connection has nothing to keep in it (100,000
    idle connections). Appends go to a fresh deque (`ReceiveBuffer.append`); one here
    would be a bug, so it fails loudly instead of sharing bytes between connections."""

    def append(self, piece: bytes | bytearray | memoryview, /) -> None:
        raise RuntimeError("append to the shared empty receive buffer")


_NO_PIECES: Final = _NoPieces()


def flat_bytes(view: memoryview) -> memoryview:
    """`view` as the bytes it covers, one item per byte. The `len` of a view of 4-byte
    items (an `array("I")`, a NumPy array) counts items, and of a 2-D view rows: taken
    for a byte count, it queued a quarter of such a write and sent it as the whole
    (asyncio's transports send every byte of any buffer). A view with gaps (`[::2]`)
    is copied in its logical order, as `bytes(view)` would."""
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


def _unchanging(data: bytes | bytearray | memoryview) -> memoryview:
    """A large write as a view of bytes no one can change: immutable bytes are kept as
    they are, and so is a plain view of them (an application that writes a large bytes
    object in slices of a memoryview: copied, every byte cost one copy more); anything
    else is copied once. A view of our own: the caller may release theirs. (A view
    reaches here flat: `SendBuffer.append` made it so.)"""
    if isinstance(data, bytes):
        return memoryview(data)
    if not isinstance(data, bytearray) and isinstance(data.obj, bytes):
        return data.cast("B")
    return memoryview(bytes(data))


class SendBuffer:
    """Bytes queued by the application from sequence number `base` on: acknowledged
    bytes leave from the front, so the buffer holds unacked then unsent bytes.

    The bytes are kept as chunks, each starting at a known sequence number: a large
    `bytes` write is held as it is, neither copied in nor moved as ACKs free its front.
    One bytearray copied every write in and, freeing from the front, CPython moved what
    was left each time the array halved: 16 MiB sent took about 15 ms of copies (1.2
    us per 1400-byte segment, more than parsing it). Small writes are glued into a
    bytearray tail so that a segment rarely spans chunks. The trade-off: a large
    chunk's memory goes when its last byte is acknowledged; `size` (what `Connection`
    charges) counts the bytes not yet acknowledged, as the bytearray's length did.
    """

    __slots__ = ("base", "chunks", "end", "fin_acked", "fin_queued", "first", "last_view",
                 "size", "starts")

    def __init__(self, base: int) -> None:
        self.base = base
        # none until the first write, and none again once all is acknowledged (NO_ITEMS).
        # A large write is held as a memoryview of its bytes, made once: a segment's
        # payload is then one slice of it, not a new view and a slice per segment.
        self.chunks: list[memoryview | bytearray] = NO_ITEMS
        self.starts: list[int] = NO_ITEMS  # the sequence number each chunk begins at
        self.first = 0  # chunks before this one are acknowledged whole (and emptied)
        self.last_view = 0  # the chunk the last `view` began in: the next one likely does
        self.size = 0   # bytes queued and not acknowledged
        # base + size, kept current (only a write or `clear` moves it): the sequence
        # number after the last byte queued (the FIN's, once closed). An attribute, not a
        # property: it is read several times per segment
        self.end = base
        self.fin_queued = False  # the application closed: a FIN follows the data
        self.fin_acked = False

    @property
    def data(self) -> bytes:
        """The bytes not yet acknowledged, glued (a copy: for tests and inspection)."""
        if not self.size:
            return b""
        first = self.first
        skip = self.base - self.starts[first]
        return b"".join(self.chunks[first:])[skip:]

    @data.setter
    def data(self, value: bytes | bytearray) -> None:
        self.clear()
        self.append(value)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes) and not isinstance(data, bytearray) and (
                data.itemsize != 1 or data.ndim != 1 or not data.c_contiguous):
            data = flat_bytes(data)
        n = len(data)
        if not n:
            return
        chunks = self.chunks
        if chunks is NO_ITEMS:
            chunks = self.chunks = []
            self.starts = []
        if n >= _OWN_CHUNK:
            chunks.append(_unchanging(data))
            self.starts.append(self.end)
        else:
            tail = chunks[-1] if len(chunks) > self.first else None
            if isinstance(tail, bytearray) and len(tail) < _OWN_CHUNK:
                tail += data
            else:
                chunks.append(bytearray(data))
                self.starts.append(self.end)
        self.size += n
        self.end += n

    def clear(self) -> None:
        """Forget every byte (the connection ended)."""
        self.chunks = NO_ITEMS
        self.starts = NO_ITEMS
        self.first = 0
        self.last_view = 0
        self.size = 0
        self.end = self.base

    def free(self, ack: int) -> int:
        """Forget what `ack` acknowledges; the number of data bytes freed."""
        n = (ack if ack < self.end else self.end) - self.base
        if n <= 0:
            return 0
        self.base += n
        self.size -= n
        if not self.size:
            self.chunks = NO_ITEMS
            self.starts = NO_ITEMS
            self.first = 0
            self.last_view = 0
            return n
        chunks, starts = self.chunks, self.starts
        first = self.first
        base = self.base
        while starts[first] + len(chunks[first]) <= base:
            chunks[first] = _EMPTY  # its memory goes now
            first += 1
        if first > 32 and 2 * first > len(chunks):
            del chunks[:first]
            del starts[:first]
            self.last_view = max(self.last_view - first, 0)
            first = 0
        self.first = first
        return n

    def view(self, seq: int, n: int) -> bytes | memoryview:
        """`n` bytes from `seq`: a view into one chunk, or glued where they span two.

        Segments are cut in order: the chunk the last one began in is tried first, then
        the next, and only then searched for (a retransmission)."""
        starts = self.starts
        chunks = self.chunks
        i = self.last_view
        last = len(starts) - 1
        if i > last or seq < starts[i]:
            i = bisect_right(starts, seq, self.first) - 1
        elif i < last and seq >= starts[i + 1]:
            i += 1
            if i < last and seq >= starts[i + 1]:
                i = bisect_right(starts, seq, i) - 1
        self.last_view = i
        chunk = chunks[i]
        off = seq - starts[i]
        if off + n <= len(chunk):
            if isinstance(chunk, bytearray):  # a tail of small writes, still growing
                return memoryview(chunk)[off:off + n]
            return chunk[off:off + n]
        parts = [chunk[off:]]
        need = n - len(parts[0])
        while need > 0:
            i += 1
            piece = chunks[i][:need]
            parts.append(piece)
            need -= len(piece)
        return b"".join(parts)


class Ranges:
    """Ranges of sequence numbers, merged (adjacent ones too) and sorted:
    `starts[i]..ends[i]`. The sender's SACK scoreboard (`sack.Scoreboard`), and the
    receiver's out-of-order pieces as the blocks its SACK option reports."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        # none: the shared empty list, until the first range (idle memory)
        self.starts: list[int] = NO_ITEMS
        self.ends: list[int] = NO_ITEMS

    def block_of(self, seq: int) -> tuple[int, int] | None:
        """The range holding seq, if any."""
        k = bisect_right(self.starts, seq) - 1
        if k >= 0 and seq < self.ends[k]:
            return self.starts[k], self.ends[k]
        return None

    def __bool__(self) -> bool:
        return bool(self.starts)

    def add(self, left: int, right: int, most: int = 1 << 62) -> bool:
        """Merge one block; True if it told us something new. A block that would make
        more than `most` ranges is not taken (False)."""
        if self.starts is NO_ITEMS:
            self.starts = []
            self.ends = []
        i = bisect_left(self.ends, left)        # first range ending at or after `left`
        j = bisect_right(self.starts, right)    # ranges starting at or before `right`
        if i < j and self.starts[i] <= left and self.ends[i] >= right:
            return False                         # already known
        if i == j and len(self.starts) >= most:
            return False                         # a range more: refused
        if i < j:
            left = min(left, self.starts[i])
            right = max(right, self.ends[j - 1])
        self.starts[i:j] = [left]
        self.ends[i:j] = [right]
        return True

    def trim(self, snd_una: int) -> None:
        """Forget what is below `snd_una` (the cumulative ACK, or rcv_nxt)."""
        k = bisect_right(self.ends, snd_una)
        if k:
            del self.starts[:k]
            del self.ends[:k]
            if not self.starts:
                self.clear()
                return
        if self.starts and self.starts[0] < snd_una:
            self.starts[0] = snd_una

    def clear(self) -> None:
        self.starts = NO_ITEMS
        self.ends = NO_ITEMS


# Every receive buffer's ranges until its first out-of-order piece (never added to):
# a connection that never sees one makes none.
_NO_RANGES: Final = Ranges()


class ReceiveBuffer:
    """In-order bytes the application has not read, and out-of-order pieces held for
    reassembly.

    In-order bytes are kept as the pieces that arrived: each is copied once out of the
    datagram buffer, and a read of whole pieces hands them over as they are (a bytearray
    was re-grown and copied out on every read).
    """

    __slots__ = ("budget", "held", "latest_ooo", "ooo", "ooo_bytes", "pieces", "size")

    def __init__(self) -> None:
        self.pieces: collections.deque[bytes | bytearray | memoryview] = _NO_PIECES
        self.size = 0            # bytes in `pieces`
        self.ooo: list[tuple[int, bytes]] = []  # out-of-order pieces, sorted by seq
        self.held = _NO_RANGES   # the same, merged: the blocks SACK reports
        self.ooo_bytes = 0
        self.latest_ooo = 0      # where the most recent out-of-order piece starts
        self.budget: ReassemblyBudget | None = None  # shared by an endpoint

    def append(self, piece: bytes | memoryview) -> None:
        pieces = self.pieces
        n = len(piece)
        self.size += n
        if not pieces:
            pieces = self.pieces = collections.deque()
        elif n < _SMALL_PIECE:
            last = pieces[-1]
            if type(last) is bytearray:  # never one a read sliced: that is a memoryview
                if len(last) < _GLUED_UP_TO:
                    last += piece
                    return
            elif len(last) < _SMALL_PIECE:
                glued = bytearray(last)
                glued += piece
                pieces[-1] = glued
                return
        pieces.append(piece)

    def read(self, max_bytes: int) -> bytes:
        """Up to max_bytes (all when negative), glued into one bytes object."""
        if max_bytes < 0 or max_bytes >= self.size:
            chunks = self.pieces
            data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            self.pieces = _NO_PIECES
            self.size = 0
            return data
        return self._take(max_bytes, glue_all=True)

    def read_pieces(self, max_bytes: int) -> bytes:
        """Like `read`, but a large piece comes alone, without a copy of its own."""
        pieces = self.pieces
        if len(pieces) == 1 and self.size <= max_bytes:
            # one piece that fits (a request, an echo): `_take`'s answer, without its loop
            data = bytes(pieces[0])
            self.pieces = _NO_PIECES
            self.size = 0
            return data
        return self._take(max_bytes, glue_all=False)

    def _take(self, max_bytes: int, glue_all: bool) -> bytes:
        chunks = self.pieces
        parts: list[bytes | bytearray | memoryview] = []
        need = max_bytes
        while need > 0 and chunks:
            first = chunks[0]
            if parts and not glue_all and len(first) >= _GLUE_BELOW:
                break  # a large piece: the next read takes it whole
            if len(first) <= need:
                parts.append(chunks.popleft())
                need -= len(first)
            else:
                view = first if isinstance(first, memoryview) else memoryview(first)
                parts.append(view[:need])
                chunks[0] = view[need:]  # the rest without a copy
                need = 0
            if not glue_all and len(first) >= _GLUE_BELOW:
                break
        if not chunks:
            self.pieces = _NO_PIECES
        data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        self.size -= len(data)
        return data

    def find_ooo(self, seq: int, payload: bytes) -> tuple[int, bool]:
        """Where (seq, payload) goes in the out-of-order queue, and whether it is there."""
        item = (seq, payload)
        i = bisect_left(self.ooo, item)
        return i, i < len(self.ooo) and self.ooo[i] == item

    def insert_ooo(self, i: int, seq: int, payload: bytes, cost: int) -> None:
        self.ooo.insert(i, (seq, payload))
        if self.held is _NO_RANGES:
            self.held = Ranges()
        self.held.add(seq, seq + len(payload))
        self.ooo_bytes += len(payload)
        if self.budget is not None:
            self.budget.used += cost

    def holds_past(self, seq: int) -> bool:
        """Whether an out-of-order piece reaches past `seq`."""
        ends = self.held.ends
        return bool(ends) and ends[-1] > seq

    def drain(self, rcv_nxt: int) -> int:
        """Move pieces that are now in order to the in-order bytes; the new rcv_nxt."""
        ooo = self.ooo
        i = 0
        while i < len(ooo):
            start, data = ooo[i]
            if start > rcv_nxt:
                break
            end = start + len(data)
            if end > rcv_nxt:
                self.append(data[rcv_nxt - start:] if rcv_nxt > start else data)
                rcv_nxt = end
            self.ooo_bytes -= len(data)
            if self.budget is not None:
                self.budget.used -= len(data) + OOO_PIECE_OVERHEAD
            i += 1
        del ooo[:i]
        self.held.trim(rcv_nxt)
        return rcv_nxt

    def memory(self) -> int:
        """Real memory of the pieces held, in order and not."""
        return (self.size + RCV_PIECE_OVERHEAD * len(self.pieces)
                + self.ooo_bytes + OOO_PIECE_OVERHEAD * len(self.ooo))

    def drop_ooo(self) -> None:
        """Forget the out-of-order pieces (the connection ended) and their charge."""
        if not self.ooo:
            return
        if self.budget is not None:
            self.budget.used -= self.ooo_bytes + OOO_PIECE_OVERHEAD * len(self.ooo)
        self.ooo_bytes = 0
        self.ooo.clear()
        self.held.clear()
