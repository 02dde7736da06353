"""Per-session persistence of sequence numbers and sent messages (FIX 4.4 Vol. 2 "Message recovery").

A restart of the gateway continues a session where it stopped: the next MsgSeqNum(34) we send
and the next one we expect, and every message we sent so that a ResendRequest(2) can be
answered with the original sequence numbers.

:class:`FileStore` layout under ``<root>/<SenderCompID>-<TargetCompID>/``:

- ``messages.log``: one record per sent message, ``<seq> <msgtype> <SendingTime> <len>\\n`` then
  the body bytes (the fields after 52, before 10) and ``\\n``; the next sender seq is the last
  record's seq + 1. Records are copied into a shared memory map of the file (``mmap``), which
  is the kernel's page cache itself: a record is in the file the moment it is saved, before the
  transport writes the same message to the socket, so a process crash loses nothing a peer has
  seen, with no write system call per session and pass (that call was the largest single cost
  of a delivered message at 5-20k X/s, docs/benchmarks.md). A power loss may lose the tail (no
  fsync), which a peer heals with a ResendRequest or a reset. The file grows by ``GROW_BYTES``
  (zeros past the last record while open; cut to the last record on close, and on load after a
  crash).
- ``target_seq``: the next MsgSeqNum expected from the peer, replaced atomically.
- ``created``: when the sequence was (re)started, for the reset schedule.
- ``last_signed_logon``: SendingTime(52) of the last accepted HMAC-signed Logon (replay guard).
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Sent messages kept per session for ResendRequest(2); older ones are answered with a gap fill.
# 100,000 is hours of a busy book per session; at ~106 B of index and ~230 B of file per
# message it bounds a session's store to ~10 MB of RAM and ~25 MB of disk between daily resets.
DEFAULT_MAX_MESSAGES = 100_000
COMPACT_MIN_BYTES = 1 << 20  # the file is compacted only when its dead head is above this
# the map grows by this much: one ftruncate + mmap per ~1,000 messages; what is untouched of it
# takes neither memory nor disk (a sparse tail)
GROW_BYTES = 256 << 10


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    msg_type: str
    sending_time: str
    body: bytes


class Store(Protocol):
    next_sender_seq: int
    next_target_seq: int
    created_ns: int

    last_signed_logon_ns: int

    def save(self, seq: int, msg_type: str, sending_time: str, body: bytes) -> None: ...
    def set_last_signed_logon(self, ns: int) -> None: ...
    def flush(self) -> None: ...
    def set_next_target(self, seq: int) -> None: ...
    def set_next_sender(self, seq: int) -> None: ...
    def get(self, begin: int, end: int) -> list[Stored]: ...
    def oldest_seq(self) -> int: ...
    def reset(self, now_ns: int | None = None) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """The same contract in memory, for unit tests and benchmarks."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.created_ns = time.time_ns()
        self.max_messages = max_messages
        self.messages: dict[int, Stored] = {}
        self.last_signed_logon_ns = 0

    def set_last_signed_logon(self, ns: int) -> None:
        self.last_signed_logon_ns = ns

    def save(self, seq: int, msg_type: str, sending_time: str, body: bytes) -> None:
        self.messages[seq] = Stored(seq, msg_type, sending_time, body)
        self.messages.pop(seq - self.max_messages, None)
        self.next_sender_seq = seq + 1

    def oldest_seq(self) -> int:
        return max(1, self.next_sender_seq - self.max_messages)

    def flush(self) -> None:
        pass

    def set_next_target(self, seq: int) -> None:
        self.next_target_seq = seq

    def set_next_sender(self, seq: int) -> None:
        self.next_sender_seq = seq

    def get(self, begin: int, end: int) -> list[Stored]:
        return [self.messages[s] for s in range(begin, end + 1) if s in self.messages]

    def reset(self, now_ns: int | None = None) -> None:
        self.messages.clear()
        self.next_sender_seq = self.next_target_seq = 1
        self.created_ns = now_ns if now_ns is not None else time.time_ns()

    def close(self) -> None:
        pass


class FileStore:
    """File-backed :class:`Store` (layout in the module docstring)."""

    def __init__(
        self, root: Path, session_id: str, *, max_messages: int = DEFAULT_MAX_MESSAGES
    ) -> None:
        self.max_messages = max_messages
        self.dir = Path(root) / session_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self.dir / "messages.log"
        self._target_path = self.dir / "target_seq"
        self._created_path = self.dir / "created"
        self._signed_path = self.dir / "last_signed_logon"
        self._index: dict[int, int] = {}  # seq -> offset of its record header
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.created_ns = 0
        self.last_signed_logon_ns = 0
        self._load()
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._offset = os.fstat(self._fd).st_size  # _load cut it to the last whole record
        self._map: mmap.mmap | None = None
        self._size = 0
        self._grow(self._offset + GROW_BYTES)

    def _load(self) -> None:
        if not self._created_path.exists():
            self._write_atomic(self._created_path, str(time.time_ns()))
        self.created_ns = int(self._created_path.read_text().strip() or 0)
        if self._signed_path.exists():
            self.last_signed_logon_ns = int(self._signed_path.read_text().strip() or 0)
        if self._target_path.exists():
            self.next_target_seq = int(self._target_path.read_text().strip() or 1)
        if self._log_path.exists():
            with open(self._log_path, "rb") as f:
                data = f.read()
            pos = 0
            good = 0
            while pos < len(data):
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break
                try:
                    seq_b, _mt, _st, len_b = data[pos:nl].split(b" ")
                    seq, length = int(seq_b), int(len_b)
                except ValueError:
                    break
                end = nl + 1 + length + 1
                if end > len(data) or data[end - 1 : end] != b"\n":
                    break  # torn tail after a crash, or the zeros past the last record: dropped
                self._index[seq] = pos
                self.next_sender_seq = seq + 1
                pos = good = end
            if good < len(data):
                with open(self._log_path, "r+b") as f:
                    f.truncate(good)
            for seq in [q for q in self._index if q < self.next_sender_seq - self.max_messages]:
                del self._index[seq]

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _grow(self, size: int) -> None:
        """Map the file at ``size`` bytes at least (a multiple of ``GROW_BYTES``)."""
        size = -(-size // GROW_BYTES) * GROW_BYTES
        if self._map is not None:
            self._map.close()
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._size = size

    def save(self, seq: int, msg_type: str, sending_time: str, body: bytes) -> None:
        """Once per message and session: few steps (one record formatted, one copy into the
        map, the index kept to ``max_messages``)."""
        off = self._offset
        index = self._index
        index[seq] = off
        rec = b"%d %s %s %d\n%s\n" % (
            seq,
            msg_type.encode(),
            sending_time.encode(),
            len(body),
            body,
        )
        end = off + len(rec)
        if end > self._size:
            self._grow(end + GROW_BYTES)
        self._map[off:end] = rec  # type: ignore[index]  # mapped from __init__ to close()
        self._offset = end
        self.next_sender_seq = seq + 1
        oldest = seq - self.max_messages
        index.pop(oldest, None)
        head = index.get(oldest + 1, 0)
        if head > COMPACT_MIN_BYTES and head > end - head:
            self._compact(head)

    def oldest_seq(self) -> int:
        return max(1, self.next_sender_seq - self.max_messages)

    def _compact(self, head: int) -> None:
        """Drop the trimmed records at the start of the file (they are more than half of it):
        the live tail is copied to a new file that replaces the log atomically. Amortized: it
        runs once per ~``max_messages`` messages, copying at most as much as it frees."""
        assert self._map is not None
        tail = self._map[head : self._offset]
        tmp = self._log_path.with_suffix(".compact")
        tmp.write_bytes(tail)
        self._close_log()
        os.replace(tmp, self._log_path)
        self._fd = os.open(self._log_path, os.O_RDWR)
        self._offset = len(tail)
        self._grow(self._offset + GROW_BYTES)
        self._index = {q: off - head for q, off in self._index.items() if off >= head}

    def flush(self) -> None:
        """Nothing to do: a saved record is in the page cache already (the shared map), so a
        peer never sees a message a restart would not know."""

    def set_next_target(self, seq: int) -> None:
        self.next_target_seq = seq
        self._write_atomic(self._target_path, str(seq))

    def set_last_signed_logon(self, ns: int) -> None:
        """Kept across restarts: a signed Logon captured before a restart stays refused."""
        self.last_signed_logon_ns = ns
        self._write_atomic(self._signed_path, str(ns))

    def set_next_sender(self, seq: int) -> None:
        self.next_sender_seq = seq

    def get(self, begin: int, end: int) -> list[Stored]:
        m = self._map
        assert m is not None
        out: list[Stored] = []
        for seq in range(begin, end + 1):
            off = self._index.get(seq)
            if off is None:
                continue
            nl = m.find(b"\n", off)
            seq_b, mt, st, len_b = m[off:nl].split(b" ")
            out.append(
                Stored(int(seq_b), mt.decode(), st.decode(), m[nl + 1 : nl + 1 + int(len_b)])
            )
        return out

    def reset(self, now_ns: int | None = None) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        os.ftruncate(self._fd, 0)  # the old records are gone; the new map reads zeros
        self._offset = 0
        self._grow(GROW_BYTES)
        self._index.clear()
        self.next_sender_seq = 1
        self.set_next_target(1)
        self.created_ns = now_ns if now_ns is not None else time.time_ns()
        self._write_atomic(self._created_path, str(self.created_ns))

    def _close_log(self) -> None:
        """Unmap, cut the file to its last record and close it."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.ftruncate(self._fd, self._offset)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._close_log()
