"""Bytes on the wire: one message = header + buffer-length table + codec bytes + raw buffers.

The header carries the total body length, so a receiver checks it against its
limit *before* allocating anything: a peer claiming a 1 TB message is refused
at once.  Array data never goes through the codec's in-band bytes: out-of-band
buffers are sent straight from the arrays' memory (``sendmsg`` of memoryviews)
and received with ``recv_into`` into fresh uninitialised arrays that the
codec (:mod:`codec`) then wraps without copying.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from distributed_ondisk.errors import ConnectionLost, ProtocolError, RPCTimeout
from distributed_ondisk.rpc import codec
from distributed_ondisk.rpc.session import Channel

MAGIC = b"DORP"
VERSION = 1
# magic, version, kind, reserved, request id, codec-bytes length, buffer count, reserved,
# body length
HEADER = struct.Struct("<4sBBHQQIIQ")

KIND_REQUEST = 1
KIND_REPLY = 2
KIND_ERROR = 3  # the call raised; the connection stays usable
KIND_FATAL = 4  # the message was refused; the sender closes the connection after it
KINDS = (KIND_REQUEST, KIND_REPLY, KIND_ERROR, KIND_FATAL)

DEFAULT_MAX_MESSAGE_BYTES = 4 << 30
MAX_BUFFERS = 1 << 16
INBAND_BELOW = 4096  # smaller array buffers stay inside the codec bytes
SMALL_MESSAGE = 64 << 10  # joined and sent with one sendall
SMALL_BODY = 1 << 20  # received with one recv_into
# A message body must keep arriving at this rate once its header is in (on top of the
# receiver's fixed allowance), so a peer cannot hold a connection by trickling bytes.
MIN_TRANSFER_RATE = 10e6  # bytes/s


def _channel(conn: socket.socket | Channel) -> Channel:
    """Framing runs over a channel; a bare socket is a plain one (tests, tools)."""
    return conn if isinstance(conn, Channel) else Channel(conn, "peer")


def encode_message(kind: int, request_id: int, obj: Any) -> list[memoryview]:
    """Serialise ``obj`` into the views of one frame (array data is not copied).
    Raises ProtocolError if the codec cannot encode it; nothing has been sent then."""
    data, buffers = codec.dumps(obj, inband_below=INBAND_BELOW)
    if len(buffers) > MAX_BUFFERS:
        raise ProtocolError(
            f"message has {len(buffers)} array buffers; at most {MAX_BUFFERS} "
            f"are allowed (send fewer, larger arrays)"
        )
    lengths = [b.nbytes for b in buffers]
    table = struct.pack(f"<{len(lengths)}Q", *lengths)
    body_len = len(table) + len(data) + sum(lengths)
    header = HEADER.pack(MAGIC, VERSION, kind, 0, request_id, len(data), len(buffers), 0, body_len)
    if body_len <= SMALL_MESSAGE:
        return [memoryview(b"".join([header, table, data, *buffers]))]
    return [memoryview(header + table + data), *buffers]


@contextlib.contextmanager
def _socket_errors(waiting: str, doing: str) -> Iterator[None]:
    """Socket failures become RPCTimeout ("timed out <waiting>") or
    ConnectionLost ("connection broke while <doing>")."""
    try:
        yield
    except (ConnectionLost, RPCTimeout):
        raise
    except TimeoutError as e:
        raise RPCTimeout(f"timed out {waiting}") from e
    except OSError as e:
        raise ConnectionLost(f"connection broke while {doing}: {e}") from e


def send_views(
    conn: socket.socket | Channel, views: list[memoryview], deadline: float | None = None
) -> None:
    """Send an encoded frame.  Socket errors become ConnectionLost / RPCTimeout."""
    with _socket_errors("sending a message", "sending"):
        _channel(conn).send_views(views, deadline)


def send_message(
    conn: socket.socket | Channel,
    kind: int,
    request_id: int,
    obj: Any,
    deadline: float | None = None,
) -> None:
    send_views(conn, encode_message(kind, request_id, obj), deadline)


def transfer_deadline(nbytes: int, allowance: float | None) -> float | None:
    """When ``nbytes`` must have gone through: ``allowance`` s plus MIN_TRANSFER_RATE."""
    if allowance is None:
        return None
    return time.monotonic() + allowance + nbytes / MIN_TRANSFER_RATE


def recv_message(
    conn: socket.socket | Channel,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    deadline: float | None = None,
    body_allowance: float | None = None,
) -> tuple[int, int, Any]:
    """Receive one frame and decode it with the codec: (kind, request id, object).

    ``deadline`` bounds the whole message, or with ``body_allowance`` only the wait for
    its header: the body then must arrive within transfer_deadline(body length,
    allowance) (a server's idle timeout vs. its transfer deadline).
    Raises ProtocolError (malformed or too large), ForbiddenError (refused content),
    ConnectionLost, RPCTimeout.
    """
    chan = _channel(conn)
    with _socket_errors("waiting for a message", "receiving"):
        head = bytearray(HEADER.size)
        chan.recv_exact(memoryview(head), deadline)
        magic, version, kind, _, request_id, data_len, nbuf, _, body_len = HEADER.unpack(head)
        if magic != MAGIC:
            raise ProtocolError(
                f"bad frame magic {bytes(magic)!r}: peer does not speak " f"distributed_ondisk RPC"
            )
        if version != VERSION or kind not in KINDS:
            raise ProtocolError(f"unsupported frame version {version} / kind {kind}")
        table_len = 8 * nbuf
        if body_len > max_bytes:
            raise ProtocolError(
                f"message of {body_len} bytes exceeds the limit of {max_bytes} " f"bytes"
            )
        if nbuf > MAX_BUFFERS or table_len + data_len > body_len:
            raise ProtocolError(
                f"inconsistent frame header: {nbuf} buffers, codec bytes "
                f"{data_len} bytes, body {body_len} bytes"
            )
        body_deadline = transfer_deadline(body_len, body_allowance)
        if body_deadline is not None:  # from now on the body's own deadline counts
            deadline = body_deadline
        if body_len <= SMALL_BODY:
            body = memoryview(bytearray(body_len))
            chan.recv_exact(body, deadline)
            lengths = struct.unpack_from(f"<{nbuf}Q", body)
            data = body[table_len : table_len + data_len]
            _check_lengths(lengths, table_len + data_len, body_len)
            buffers, pos = [], table_len + data_len
            for n in lengths:
                buffers.append(body[pos : pos + n])
                pos += n
        else:
            # np.empty: pages are only touched as data arrives, so a peer that claims a
            # large message and stops early does not cost its claimed size in memory.
            head_part = memoryview(np.empty(table_len + data_len, dtype=np.uint8))
            chan.recv_exact(head_part, deadline)
            lengths = struct.unpack_from(f"<{nbuf}Q", head_part)
            _check_lengths(lengths, table_len + data_len, body_len)
            data = head_part[table_len:]
            buffers = []
            for n in lengths:
                arr = np.empty(n, dtype=np.uint8)  # uninitialised: no memset before the copy
                chan.recv_exact(memoryview(arr), deadline)
                buffers.append(arr)
    return kind, request_id, codec.loads(data, buffers=buffers)


def _check_lengths(lengths: tuple[int, ...], prefix: int, body_len: int) -> None:
    if prefix + sum(lengths) != body_len:
        raise ProtocolError(
            f"inconsistent frame: buffer lengths sum to {sum(lengths)} but the "
            f"body has {body_len - prefix} bytes for them"
        )
