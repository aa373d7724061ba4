"""Read a safetensors file one tensor at a time into fresh memory, never through a memory map.

``safe_open``/``load_file`` hand out tensors backed by a memory map of the file. Every page a conversion reads
(e.g. q/k rows it then permutes into a new tensor) stays resident, and counted, for as long as any tensor of
that file lives: the source and the converted copy would both be held. Reading each tensor's bytes with a
plain ``readinto`` straight into the tensor's own storage keeps exactly one copy, owned by the process, and
leaves the model independent of the source files (they may be deleted or overwritten afterwards).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.interop.errors import FormatError
from recurrent_lm.model.io import CONFIG_FILE, weight_files

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


@dataclass(frozen=True)
class StoredTensor:
    """One entry of a safetensors header; :meth:`read` loads its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    """Absolute byte offset of the data in the file."""
    nbytes: int
    file: BinaryIO
    path: Path

    def read(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The tensor, cast to ``dtype`` if given (the stored copy is dropped right away)."""
        tensor = torch.empty(self.shape, dtype=self.dtype)
        self.file.seek(self.start)
        got = self.file.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) if self.nbytes else 0
        if got != self.nbytes:
            raise ConfigError(f"{self.path}: tensor {self.name} is truncated ({got} of {self.nbytes} bytes); "
                             "the file is incomplete, copy it again")
        return tensor if dtype is None else tensor.to(dtype)

    def check_shape(self, expected: tuple[int, ...]) -> None:
        """Refuse a tensor whose shape is not the one config.json implies."""
        if self.shape != tuple(expected):
            raise FormatError(f"{self.path}: tensor {self.name} has shape {self.shape}, but {CONFIG_FILE} implies "
                              f"{tuple(expected)}; the config and the weights are from different models")


def stored_tensors(path: Path, file: BinaryIO) -> Iterator[StoredTensor]:
    """The tensors of the open safetensors ``file`` (at ``path``), in file order."""
    try:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        header.pop("__metadata__", None)
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        for name, info in entries:
            begin, end = info["data_offsets"]
            if info["dtype"] not in DTYPES:
                raise ConfigError(f"tensor {name} has dtype {info['dtype']}, which recurrent_lm does not read; "
                                 f"convert it to one of {sorted(DTYPES)}")
            yield StoredTensor(name, tuple(info["shape"]), DTYPES[info["dtype"]], 8 + length + begin, end - begin, file,
                               path)
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is corrupt or not a safetensors file (bad header: {err!r})") from err


def checkpoint_tensors(directory: Path) -> Iterator[StoredTensor]:
    """Every tensor of a checkpoint directory (model.safetensors, or the shards its index names), file by file
    in file order, each file open while its tensors are handed out. A tensor stored twice is an error."""
    seen: dict[str, Path] = {}
    for path in weight_files(directory):
        with path.open("rb") as file:
            for stored in stored_tensors(path, file):
                if stored.name in seen:
                    raise FormatError(f"tensor {stored.name} is stored twice, in {seen[stored.name]} and {path}; "
                                      "remove the stale shard")
                seen[stored.name] = path
                yield stored
