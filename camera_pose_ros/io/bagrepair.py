"""Recover the messages of a bag whose recorder was killed (SIGKILL, OOM, power loss).

A rosbag2 bag is complete only once its writer closed it: the MCAP storage then ends with a
summary section and footer, and ``metadata.yaml`` is written beside it. A recording cut off
before that has neither, and readers refuse it. What it holds is still there:

* **MCAP**: the data section is a sequence of records (``opcode u8, length u64 LE,
  content``); rosbags' writer puts each group of messages in a Chunk record, together with
  the Schema and Channel records they need. :func:`repair_bag` scans the records from the
  start, reads every complete chunk (uncompressed, zstd or lz4), salvages the complete
  messages of a chunk that was cut off (uncompressed chunks only) and stops at the first
  incomplete record.
* **sqlite3**: a copy of the database is opened, so that SQLite rolls back the transaction
  that was open when the recorder died; every committed row is recovered.

The recovered messages are written to a new, complete bag (``metadata.yaml`` and a closed
storage file) with the same storage format.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer

from camera_pose_ros.errors import BagError
from camera_pose_ros.io.bags import (
    REPAIR_MAGIC,
    TYPESTORE,
    storage_files,
)

__all__ = ["RepairResult", "repair_bag", "default_repair_path"]

log = logging.getLogger(__name__)

_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x03, 0x04, 0x05, 0x06
_OP_FOOTER, _OP_DATA_END = 0x02, 0x0F


@dataclass
class RepairResult:
    """What :func:`repair_bag` recovered.

    Attributes:
        source: the damaged bag.
        out: the repaired bag (``source`` itself when it needed no repair).
        storage: ``mcap`` or ``sqlite3``.
        messages: messages written to ``out``.
        topics: messages per topic.
        notes: what could not be recovered (cut-off records, corrupt chunks, ...).
    """

    source: Path
    out: Path
    storage: str
    messages: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the user."""
        per_topic = ", ".join(f"{t} {n}" for t, n in sorted(self.topics.items()))
        text = (f"recovered {self.messages} message(s) from {self.source} into {self.out}"
                + (f" ({per_topic})" if per_topic else ""))
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


@dataclass
class _Channel:
    topic: str
    msgtype: str
    serialization: str
    msgdef_encoding: str
    msgdef: str
    qos: str = ""
    rihs01: str = ""


def default_repair_path(bag: str | os.PathLike) -> Path:
    """``BAG_repaired`` beside the bag folder (or beside a bare storage file)."""
    bag = Path(bag)
    stem = bag.stem if bag.is_file() else bag.name
    return bag.parent / f"{stem}_repaired"


# ---------------------------------------------------------------- MCAP scanning


class _Buf:
    """A cursor over bytes; :class:`struct.error`/:class:`IndexError` on reading past the end."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise IndexError("record ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode("utf-8")


@dataclass
class _McapScan:
    """State of a scan: schemas and channels seen, and what was lost."""

    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    channels: dict[int, _Channel] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def records(self, data: memoryview, where: str, complete: bool = True
                ) -> Iterator[tuple[int, int, bytes]]:
        """``(channel_id, log_time, payload)`` of the Message records in ``data``.

        Schema and Channel records update the scan's tables. Stops at an incomplete record
        (the end of a cut-off chunk; noted only when ``data`` should have been
        ``complete``).
        """
        buf = _Buf(data)
        while buf.pos < len(data):
            if len(data) - buf.pos < 9 or struct.unpack_from(
                    "<Q", data, buf.pos + 1)[0] > len(data) - buf.pos - 9:
                if complete:
                    self.notes.append(f"{where}: {len(data) - buf.pos} byte(s) of a broken "
                                      "record lost")
                return
            op = data[buf.pos]
            length = struct.unpack_from("<Q", data, buf.pos + 1)[0]
            buf.pos += 9
            rec = _Buf(buf.take(length))
            try:
                if op == _OP_SCHEMA:
                    sid, name, encoding = rec.u16(), rec.string(), rec.string()
                    self.schemas[sid] = (name, encoding,
                                         bytes(rec.take(rec.u32())).decode("utf-8"))
                elif op == _OP_CHANNEL:
                    self._channel(rec)
                elif op == _OP_MESSAGE:
                    cid, _seq, log_time = rec.u16(), rec.u32(), rec.u64()
                    rec.u64()  # publish time
                    yield cid, log_time, bytes(rec.data[rec.pos:])
            except (IndexError, struct.error, UnicodeDecodeError):
                self.notes.append(f"{where}: a malformed record (opcode 0x{op:02x}) skipped")

    def _channel(self, rec: _Buf) -> None:
        cid, sid, topic, encoding = rec.u16(), rec.u16(), rec.string(), rec.string()
        meta = _Buf(rec.take(rec.u32()))
        qos = ""
        while meta.pos < len(meta.data):
            key, value = meta.string(), meta.string()
            if key == "offered_qos_profiles":
                qos = value
        if sid not in self.schemas:
            self.notes.append(f"channel {topic} has no schema; its messages are dropped")
            return
        name, fmt, msgdef = self.schemas[sid]
        self.channels[cid] = _Channel(topic, name, encoding, fmt, msgdef, qos)

    def chunk(self, content: memoryview, complete: bool, where: str
              ) -> Iterator[tuple[int, int, bytes]]:
        """The messages of one Chunk record (``complete``: not cut off)."""
        buf = _Buf(content)
        try:
            buf.u64(), buf.u64()  # message start/end time
            size, crc = buf.u64(), buf.u32()
            compression = buf.string()
            length = buf.u64()
        except (IndexError, struct.error, UnicodeDecodeError):
            self.notes.append(f"{where}: chunk header cut off")
            return
        body = content[buf.pos:buf.pos + length]
        complete = complete and len(body) == length
        if compression:
            if not complete:
                self.notes.append(f"{where}: compressed chunk cut off, its messages lost")
                return
            try:
                body = memoryview(_decompress(bytes(body), compression))
            except Exception as exc:  # noqa: BLE001 -- zstd/lz4 errors have no common base
                self.notes.append(f"{where}: corrupt {compression} chunk skipped ({exc})")
                return
        if complete and len(body) != size:
            self.notes.append(f"{where}: chunk of the wrong size skipped")
            return
        if complete and crc and zlib.crc32(body) != crc:
            self.notes.append(f"{where}: chunk with a wrong checksum skipped")
            return
        yield from self.records(body, where, complete)


def _decompress(data: bytes, compression: str) -> bytes:
    if compression == "zstd":
        try:
            from compression import zstd  # Python 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(data)
    raise BagError(f"unknown chunk compression {compression!r}")


#: a cut-off chunk larger than this is not salvaged (its length field is likely garbage)
_MAX_PARTIAL_CHUNK = 256 * 2**20


def _scan_mcap(path: Path, scan: _McapScan) -> Iterator[tuple[int, int, bytes]]:
    """Messages of an MCAP file, complete or cut off, in file order (read record by record)."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise BagError(f"cannot read {path}: {exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(8) != REPAIR_MAGIC:
            raise BagError(f"{path} is not an MCAP file (wrong magic): nothing to recover")
        pos = 8
        while pos < size:
            head = fh.read(9)
            if len(head) < 9:
                scan.notes.append(f"{path.name}: cut off inside a record header")
                return
            op, length = head[0], struct.unpack_from("<Q", head, 1)[0]
            if op in (_OP_DATA_END, _OP_FOOTER):
                return
            where = f"{path.name} at byte {pos}"
            left = size - pos - 9
            if length > left:
                scan.notes.append(f"{path.name}: cut off at byte {size} inside a record "
                                  f"that starts at byte {pos}")
                if op == _OP_CHUNK and left <= _MAX_PARTIAL_CHUNK:
                    yield from scan.chunk(memoryview(fh.read(left)), False, where)
                return
            if op in (_OP_CHUNK, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE):
                content = memoryview(fh.read(length))
                if op == _OP_CHUNK:
                    yield from scan.chunk(content, True, where)
                else:
                    yield from scan.records(memoryview(head + bytes(content)), where)
            else:
                fh.seek(length, os.SEEK_CUR)
            pos += 9 + length


# ---------------------------------------------------------------- sqlite3


def _scan_sqlite(path: Path, channels: dict[int, _Channel], notes: list[str]
                 ) -> Iterator[tuple[int, int, bytes]]:
    """Committed messages of a ``.db3`` (a copy is opened, so a hot journal rolls back)."""
    with tempfile.TemporaryDirectory(prefix="bag-repair-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-journal", "-wal", "-shm"):
            src = path.with_name(path.name + suffix)
            if src.exists():
                shutil.copy2(src, copy.with_name(copy.name + suffix))
        try:
            con = sqlite3.connect(copy)
            try:
                defs: dict[str, tuple[str, str, str]] = {}
                tables = {r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")}
                if "message_definitions" in tables:
                    for typ, enc, text, digest in con.execute(
                            "SELECT topic_type, encoding, encoded_message_definition, "
                            "type_description_hash FROM message_definitions"):
                        defs[typ] = (enc, text, digest)
                cols = {r[1] for r in con.execute("PRAGMA table_info(topics)")}
                qos_col = "offered_qos_profiles" if "offered_qos_profiles" in cols else "''"
                hash_col = "type_description_hash" if "type_description_hash" in cols else "''"
                for tid, name, typ, ser, qos, digest in con.execute(
                        f"SELECT id, name, type, serialization_format, {qos_col}, {hash_col} "
                        "FROM topics"):
                    enc, text, def_digest = defs.get(typ, ("", "", ""))
                    channels[tid] = _Channel(name, typ, ser, enc, text, qos or "",
                                             digest or def_digest)
                for tid, stamp, data in con.execute(
                        "SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                    yield tid, stamp, bytes(data)
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise BagError(f"cannot read {path} as an sqlite3 bag: {exc}") from exc
    if not channels:
        notes.append(f"{path.name}: no topics committed")


# ---------------------------------------------------------------- writing


def _rihs01(ch: _Channel) -> str:
    """The type hash rosbag2 stores for a channel (from its own definition if possible)."""
    if ch.rihs01:
        return ch.rihs01
    from rosbags.typesys import Stores, get_typestore
    from rosbags.typesys.msg import get_types_from_msg

    if ch.msgdef and ch.msgdef_encoding == "ros2msg":
        try:
            store = get_typestore(Stores.EMPTY)
            store.register(get_types_from_msg(ch.msgdef, ch.msgtype))
            return store.hash_rihs01(ch.msgtype)
        except Exception as exc:  # noqa: BLE001 -- fall back to the built-in definition
            log.debug("cannot hash the stored definition of %s: %s", ch.msgtype, exc)
    if ch.msgtype in TYPESTORE.types:
        return TYPESTORE.hash_rihs01(ch.msgtype)
    raise BagError(f"cannot recover topic {ch.topic}: no usable definition of {ch.msgtype}")


def _qos(text: str) -> list:
    if not text:
        return []
    try:
        from rosbags.rosbag2.metadata import parse_qos

        return parse_qos(text)
    except Exception as exc:  # noqa: BLE001 -- QoS is informative only
        log.debug("dropping unreadable QoS profile %r: %s", text, exc)
        return []


def _write(messages: Iterator[tuple[_Channel | None, int, bytes]], writer: Writer,
           result: RepairResult) -> None:
    conns: dict[tuple[str, str, str], Connection] = {}
    orphans = 0
    for ch, stamp, data in messages:
        if ch is None:
            orphans += 1
            continue
        key = (ch.topic, ch.msgtype, ch.serialization)
        conn = conns.get(key)
        if conn is None:
            msgdef = ch.msgdef if ch.msgdef_encoding in ("ros2msg", "ros2idl") else None
            if msgdef:
                conn = writer.add_connection(
                    ch.topic, ch.msgtype, msgdef=msgdef, rihs01=_rihs01(ch),
                    serialization_format=ch.serialization or "cdr",
                    offered_qos_profiles=_qos(ch.qos))
            elif ch.msgtype in TYPESTORE.types:
                conn = writer.add_connection(ch.topic, ch.msgtype, typestore=TYPESTORE,
                                             serialization_format=ch.serialization or "cdr",
                                             offered_qos_profiles=_qos(ch.qos))
            else:
                raise BagError(f"cannot recover topic {ch.topic}: no definition of "
                               f"{ch.msgtype}")
            conns[key] = conn
        writer.write(conn, stamp, data)
        result.messages += 1
        result.topics[ch.topic] = result.topics.get(ch.topic, 0) + 1
    if orphans:
        result.notes.append(f"{orphans} message(s) of channels never declared dropped")


def repair_bag(bag: str | os.PathLike, out: str | os.PathLike | None = None) -> RepairResult:
    """Write the recoverable messages of an unfinished bag to a new, complete bag.

    Args:
        bag: a bag folder (MCAP or sqlite3) whose recorder was killed, or its storage file.
        out: the repaired bag folder to create (default ``BAG_repaired`` beside it).

    Returns:
        What was recovered. A complete bag is copied whole (nothing to lose).

    Raises:
        BagError: no bag, not a bag, ``out`` exists, or nothing at all can be recovered.
    """
    bag = Path(bag)
    if not bag.exists():
        raise BagError(f"bag not found: {bag}")
    files = storage_files(bag)
    if not files:
        raise BagError(f"{bag} holds no .mcap or .db3 file: nothing to recover")
    kinds = {f.suffix for f in files}
    if len(kinds) > 1:
        raise BagError(f"{bag} mixes .mcap and .db3 files; repair them one at a time")
    storage = "mcap" if kinds == {".mcap"} else "sqlite3"
    out = Path(out) if out is not None else default_repair_path(bag)
    if out.exists():
        raise BagError(f"{out} exists; choose another --out")
    result = RepairResult(bag, out, storage)

    def messages() -> Iterator[tuple[_Channel | None, int, bytes]]:
        for f in files:  # schema, channel and topic ids are per file
            channels: dict[int, _Channel] = {}
            if storage == "mcap":
                found = _scan_mcap(f, _McapScan(channels=channels, notes=result.notes))
            else:
                found = _scan_sqlite(f, channels, result.notes)
            for cid, stamp, data in found:
                yield channels.get(cid), stamp, data

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(tmp / out.name, version=9, storage_plugin=plugin)
        writer.open()
        try:
            _write(messages(), writer, result)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if not result.messages:
            raise BagError(f"no complete message could be recovered from {bag}"
                           + (f" ({'; '.join(result.notes)})" if result.notes else ""))
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s", result.summary())
    return result
