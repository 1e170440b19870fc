"""Safetensors shards: strict header parsing, lazy tensors, a streaming writer.

Our own reader because the format's guarantees are what we check: header length bounds, dtype
and shape against byte ranges, ranges inside the file, no overlaps and no holes. Tensors are
read on demand into buffers the caller owns (or viewed through a memory map when asked), so
only the tensors in use are resident.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from k2trt.errors import K2Error, show
from k2trt.fsutil import open_regular, parse_json

if TYPE_CHECKING:
    import torch

# Real headers are a few MB (Kimi K2's largest: ~0.5 MB). The safetensors library refuses
# longer than 100,000,000 bytes (MAX_HEADER_SIZE in safetensors/src/tensor.rs, checked at
# huggingface/safetensors@24b0b28); so do we.
MAX_HEADER_BYTES = 100_000_000
HEADER_ALIGN = 8

# safetensors dtype -> (bytes per element, numpy dtype for direct views or None when numpy has none)
DTYPES: dict[str, tuple[int, str | None]] = {
    "F64": (8, "<f8"),
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, None),
    "F8_E4M3": (1, None),
    "F8_E5M2": (1, None),
    "I64": (8, "<i8"),
    "I32": (4, "<i4"),
    "I16": (2, "<i2"),
    "I8": (1, "i1"),
    "U8": (1, "u1"),
    "BOOL": (1, "?"),
}
# Same table keyed the torch way; raw storage for dtypes numpy lacks.
TORCH_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
RAW_VIEW = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shard file, dtype, shape and absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    shard: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # Python ints: no overflow on hostile shapes

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _fail(path: Path, message: str) -> K2Error:
    return K2Error(message, path=path)


def _read_header_bytes(path: Path, fh: BinaryIO, size: int) -> bytes:
    if size < 8:
        raise _fail(path, f"truncated shard: {size} bytes, shorter than the 8-byte header length")
    try:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES:
            raise _fail(path, f"header length {n} is absurdly large (limit {MAX_HEADER_BYTES})")
        if 8 + n > size:
            raise _fail(path, f"header length {n} runs past the end of the file ({size} bytes)")
        raw = fh.read(n)
    except (OSError, struct.error) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise _fail(path, f"cannot read shard header: {reason}") from None
    if len(raw) != n:
        raise _fail(path, f"header cut short: {len(raw)} of {n} bytes (truncated while read?)")
    return raw


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (JSON true/false are not sizes)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numel_up_to(shape: list[int], cap: int) -> int | None:
    """The element count, or None once it passes `cap` (a hostile shape of a million huge
    dimensions must not turn into a million-digit multiplication)."""
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > cap:
            return None
    return count


def _parse_entry(path: Path, name: str, entry: Any, base: int, size: int) -> TensorInfo:
    where = f"tensor {show(name)}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, f"{where}: header entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(path, f"{where}: unknown dtype {show(dtype)} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _fail(
            path, f"{where}: shape must be a list of non-negative integers, got {show(shape)}"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _fail(path, f"{where}: data_offsets must be [begin, end] with begin <= end")
    info = TensorInfo(name, dtype, tuple(shape), base + offsets[0], base + offsets[1], path)
    itemsize = DTYPES[dtype][0]
    count = _numel_up_to(shape, info.nbytes // itemsize)
    if count is None or count * itemsize != info.nbytes:
        needs = "more" if count is None else str(count * itemsize)
        raise _fail(
            path,
            f"{where}: byte range holds {info.nbytes} bytes, {dtype}{show(shape)} needs {needs}",
        )
    if info.end > size:
        raise _fail(
            path,
            f"{where}: byte range ends at {info.end}, past the end of the file "
            f"({size} bytes): truncated shard?",
        )
    return info


def _check_layout(path: Path, infos: list[TensorInfo], base: int, size: int) -> None:
    cursor = base
    for info in sorted(infos, key=lambda i: (i.start, i.end)):
        if info.start < cursor:
            raise _fail(
                path,
                f"tensor {show(info.name)}: byte range [{info.start}, {info.end}) "
                f"overlaps the previous tensor",
            )
        if info.start > cursor:
            raise _fail(
                path, f"tensor {show(info.name)}: {info.start - cursor} unindexed bytes before it"
            )
        cursor = info.end
    if cursor != size:
        raise _fail(path, f"{size - cursor} bytes after the last tensor are not indexed")


def read_header(
    path: Path, root: Path | None = None
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read a shard's header (a regular file, inside `root` when given) and validate it.

    >>> tensors, meta = read_header(Path("model-1-of-2.safetensors"))  # doctest: +SKIP
    """
    fd, size = open_regular(path, "shard", root=root)
    with open(fd, "rb") as fh:
        raw = _read_header_bytes(path, fh, size)
    return validate_header(path, parse_json(raw, path, "header"), 8 + len(raw), size)


def validate_header(
    path: Path, header: Any, base: int, size: int
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The one header validator: entries, byte ranges against the file, `__metadata__`.

    Returns tensors by name and `__metadata__` (which, as the safetensors library requires,
    is absent, null, or an object of strings).
    """
    if not isinstance(header, dict):
        raise _fail(path, "header must be a JSON object")
    header = dict(header)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(path, f"__metadata__ must map strings to strings, got {show(meta)}")
    infos = [_parse_entry(path, name, entry, base, size) for name, entry in header.items()]
    _check_layout(path, infos, base, size)
    return {i.name: i for i in infos}, meta


class ShardFiles:
    """Shard files opened once and shared by lazy tensors.

    Reads go through `pread` into a buffer the caller owns: memory holds the tensors in use and
    nothing else. (A memory map would charge every touched page to the process; with huge-page
    page cache one 3 KB scale costs 2 MB of RSS, ~120 GiB over Kimi K2's 69,608 scales.)
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read_into(self, info: TensorInfo, buf: memoryview) -> None:
        """Fill `buf` (info.nbytes long) with the tensor's bytes."""
        fd, done = self._fd(info.shard), 0
        while done < info.nbytes:
            n = os.preadv(fd, [buf[done:]], info.start + done)
            if n <= 0:
                raise K2Error(
                    f"tensor {info.name!r}: file ended at byte {info.start + done} "
                    f"(truncated since it was opened?)",
                    path=info.shard,
                )
            done += n

    def view(self, info: TensorInfo) -> memoryview:
        """A zero-copy read-only view through a memory map (pages count toward RSS)."""
        mm = self._maps.get(info.shard)
        if mm is None:
            mm = self._maps[info.shard] = mmap.mmap(
                self._fd(info.shard), 0, access=mmap.ACCESS_READ
            )
        return memoryview(mm)[info.start : info.end]

    def close(self) -> None:
        for mm in self._maps.values():
            # A caller may still hold a view; the GC unmaps it then.
            with contextlib.suppress(BufferError):
                mm.close()
        for fd in self._fds.values():
            os.close(fd)
        self._maps.clear()
        self._fds.clear()


@dataclass(frozen=True)
class LazyTensor:
    """A tensor not yet read: metadata now, bytes only when asked for.

    >>> t = ckpt.tensor("model.norm.weight")  # doctest: +SKIP
    >>> t.shape, t.dtype                        # no I/O  # doctest: +SKIP
    """

    info: TensorInfo
    files: ShardFiles

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dtype(self) -> str:
        return self.info.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    def _np_dtype(self) -> str:
        itemsize, np_dtype = DTYPES[self.info.dtype]
        return np_dtype or RAW_VIEW[itemsize]

    def raw(self) -> NDArray[Any]:
        """The stored elements read into a fresh numpy array (unsigned ints for bf16/fp8)."""
        buf = np.empty(self.info.nbytes, dtype=np.uint8)
        self.files.read_into(self.info, buf.data)
        return buf.view(self._np_dtype()).reshape(self.info.shape)

    def mapped(self) -> NDArray[Any]:
        """Zero-copy, read-only view of the stored elements through a memory map."""
        view = np.frombuffer(self.files.view(self.info), dtype=self._np_dtype())
        return view.reshape(self.info.shape)

    def torch(self) -> torch.Tensor:
        """A torch tensor with the stored dtype (read once: one tensor resident)."""
        import torch

        tensor = torch.from_numpy(self.raw().reshape(-1))
        return tensor.view(getattr(torch, TORCH_DTYPES[self.info.dtype])).reshape(self.info.shape)


# ---------------------------------------------------------------------------------------------
# Writing


def _dtype_name(tensor_dtype: Any) -> str:
    text = str(tensor_dtype).removeprefix("torch.")
    for name, torch_name in TORCH_DTYPES.items():
        if torch_name == text:
            return name
    raise K2Error(f"no safetensors dtype for {tensor_dtype}")


def build_header(
    entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[tuple[str, int]]]:
    """Header bytes (padded to 8) for tensors in the given order, and each tensor's byte size."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    sizes: list[tuple[str, int]] = []
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        sizes.append((name, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return struct.pack("<Q", len(raw)) + raw, sizes


def tensor_bytes(tensor: Any) -> memoryview:
    """Little-endian bytes of a torch tensor or numpy array, without a copy when contiguous."""
    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor).reshape(-1).view(np.uint8).data
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class ShardWriter:
    """Write one shard tensor by tensor: header first (shapes are known), then data, then rename.

    Nothing appears at `path` until every declared tensor was written and `close()` ran.

    >>> with ShardWriter(p, [("w", "F32", (2, 2))]) as w:  # doctest: +SKIP
    ...     w.write("w", torch.ones(2, 2))
    """

    def __init__(
        self,
        path: Path,
        entries: list[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        sync: bool = True,
    ) -> None:
        self.path = path
        self._sync = sync  # False: the caller syncs the whole output once (convert does)
        self._entries = {name: (dtype, shape) for name, dtype, shape in entries}
        header, self._sizes = build_header(entries, metadata)
        self._next = 0
        self._tmp = path.with_name(f".{path.name}.partial")
        self._fh: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._fh.write(header)

    def write(self, name: str, tensor: Any) -> None:
        """Write the next declared tensor whole."""
        self.write_parts(name, [tensor])

    def write_parts(self, name: str, parts: Iterable[Any]) -> None:
        """Write the next declared tensor as consecutive pieces (e.g. dequantized row blocks),
        so it never has to exist in memory whole."""
        expected_name, nbytes = self._sizes[self._next]
        if name != expected_name:
            raise K2Error(
                f"tensor {name!r} written out of order (expected {expected_name!r})", path=self.path
            )
        dtype, shape = self._entries[name]
        written = 0
        for part in parts:
            data = tensor_bytes(part)
            if not isinstance(part, np.ndarray) and _dtype_name(part.dtype) != dtype:
                written = -1
                break
            written += len(data)
            if written > nbytes:
                break
            self._fh.write(data)
        if written != nbytes:
            raise K2Error(
                f"tensor {name!r}: data does not match declared {dtype}{list(shape)}",
                path=self.path,
            )
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._sizes):
            missing = self._sizes[self._next][0]
            self.abort()
            raise K2Error(f"shard closed before tensor {missing!r} was written", path=self.path)
        self._fh.flush()
        if self._sync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_chunks(path: Path, chunk: int = 8 << 20) -> Iterator[memoryview]:
    """Stream a file in fixed-size chunks through one reused buffer (bounded memory)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            yield view[:n]
