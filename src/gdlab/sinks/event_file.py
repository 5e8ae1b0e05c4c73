"""A TensorBoard event file written in the caller's thread, in batches.

TensorBoard's own `EventFileWriter` (which `torch.utils.tensorboard.SummaryWriter` uses too)
hands every event to a background thread that frames it with a CRC-32C computed in pure
Python: about 30 µs of interpreter time per event, competing with the training loop for the
GIL, as much as a whole step of a small objective. This writer frames records with the C
implementation from `google-crc32c` (falling back to TensorBoard's own if it is missing) and
writes them in batches, so a log point costs a few microseconds.

The file format is TensorBoard's: TFRecord framing of serialized `Event` protos, the first
event carrying the file version.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import socket
import struct
import time
from contextlib import suppress
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event

from gdlab.atomic import DiskFull, is_disk_full

try:
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - the dependency is declared; this keeps files valid
    _crc32c = None

_FILE_COUNTER = itertools.count()
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    if _crc32c is None:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
            masked_crc32c as slow_masked_crc32c,
        )

        return slow_masked_crc32c(data)
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def varint(value: int) -> bytes:
    """Protocol-buffer base-128 encoding of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def float32(value: float) -> bytes:
    """A float as protobuf's `float` field stores it; out-of-range values become +-inf."""
    try:
        return _FLOAT32.pack(value)
    except OverflowError:
        return _FLOAT32.pack(math.copysign(math.inf, value))


_FLOAT32 = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


class ScalarEvents:
    """Serialize `Event(step, wall_time, summary=Summary(value=[Value(tag, simple_value)...]))`.

    Byte for byte what the protobuf classes produce, built from cached per-tag prefixes: a
    log point's scalars cost about a microsecond instead of several for the message objects.
    Field numbers: Event.wall_time 1 (double), Event.step 2 (varint), Event.summary 5;
    Summary.value 1; Summary.Value.tag 1 (string), Summary.Value.simple_value 2 (float).
    """

    def __init__(self) -> None:
        self._prefixes: dict[str, bytes] = {}

    def _prefix(self, tag: str) -> bytes:
        prefix = self._prefixes.get(tag)
        if prefix is None:
            name = tag.encode("utf-8")
            value_fields = b"\x0a" + varint(len(name)) + name + b"\x15"
            prefix = b"\x0a" + varint(len(value_fields) + 4) + value_fields
            self._prefixes[tag] = prefix
        return prefix

    def encode(self, step: int, wall_time: float, scalars: list[tuple[str, float]]) -> bytes:
        values = b"".join([self._prefix(tag) + float32(v) for tag, v in scalars])
        step_field = b"\x10" + varint(step) if step else b""  # proto3 leaves out a zero
        return (
            b"\x09" + _DOUBLE.pack(wall_time) + step_field + b"\x2a" + varint(len(values)) + values
        )


def frame(data: bytes) -> bytes:
    """One TFRecord: length, its CRC, the payload, its CRC."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


class EventFile:
    """Append events to `events.out.tfevents.*` in `log_dir`; flushed every `flush_secs`.

    Records are written whole or not at all: where a write fails, the file is cut back to its
    last whole record, the error is raised (`gdlab.atomic.DiskFull` for a full disk, else an
    OSError naming the file), and the writer takes nothing more (closing it then writes
    nothing). A file that could not even take its first record is removed.
    """

    def __init__(self, log_dir: Path, flush_secs: float = 10.0, max_pending: int = 1000) -> None:
        # TensorBoard reads a directory's event files in name order, and a resumed run's
        # purge of the interrupted session's points only works if the newer file sorts
        # later: so the microseconds come right after the seconds, before host and pid.
        now = time.time_ns() // 1000
        name = (
            f"events.out.tfevents.{now // 10**6:010d}.{now % 10**6:06d}."
            f"{socket.gethostname()}.{os.getpid()}.{next(_FILE_COUNTER)}"
        )
        self.path = Path(log_dir) / name
        # unbuffered: each flush is one write of whole records, which can be undone
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open for the run
        self._size = 0  # bytes of whole records in the file
        self._pending: list[bytes] = []
        self._flush_secs = flush_secs
        self._max_pending = max_pending
        self._last_flush = time.monotonic()
        #: the error that stopped this writer (a full disk), or None
        self.failed: OSError | None = None
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        try:
            self.flush()
        except (OSError, DiskFull):
            with suppress(OSError):
                self.path.unlink()  # not even the version record: no empty event file left
            raise

    def add_event(self, event: Event) -> None:
        self.add_serialized(event.SerializeToString())

    def add_serialized(self, data: bytes) -> None:
        """Append one already serialized `Event`."""
        if self.failed is not None:
            return
        self._pending.append(frame(data))
        if (
            len(self._pending) >= self._max_pending
            or time.monotonic() - self._last_flush > self._flush_secs
        ):
            self.flush()

    def flush(self) -> None:
        if self._pending and self.failed is None:
            data = b"".join(self._pending)
            self._pending.clear()
            try:
                view = memoryview(data)
                while view:
                    written = self._file.write(view)
                    if not written:  # a raw file may accept nothing without an error
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    view = view[written:]
            except OSError as err:
                self._fail(err)
                if is_disk_full(err):
                    raise DiskFull(self.path, err) from err
                raise
            self._size += len(data)
        self._last_flush = time.monotonic()

    def _fail(self, err: OSError) -> None:
        """Cut the file back to its whole records and stop writing."""
        if err.filename is None:
            err.filename = str(self.path)
        self.failed = err
        with suppress(OSError):
            os.ftruncate(self._file.fileno(), self._size)
        with suppress(OSError):
            self._file.close()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
