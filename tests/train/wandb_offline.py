"""Read an offline W&B run back: the records of ``run-<id>.wandb`` (a LevelDB-style log of
protobuf ``Record`` messages), without a network or wandb's sync service.

Format (wandb's datastore): a 7-byte header ``:W&B`` + magic 0xBEE1 + version; then 32 KiB
blocks of chunks, each ``crc32c (4) | length (2) | type (1) | data``, type 1 = a whole record,
2/3/4 = its first/middle/last part; a block's last < 7 bytes are padding.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def record_bytes(path: str | Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += space
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"name", "group", "config": {...}, "history": [{key: value}], "summary": {...},
    "files": [...]}``."""
    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    (wandb_file,) = run_dir.glob("run-*.wandb")
    config: dict = {}
    history: list[dict] = []
    summary: dict = {}
    identity: dict = {}
    for raw in record_bytes(wandb_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            identity = {"name": record.run.display_name, "group": record.run.run_group}
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        else:
            updates = ()
        for item in updates:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        if kind == "history":
            history.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        if kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    files = sorted(str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*"))
    return {
        **identity,
        "config": config,
        "history": history,
        "summary": summary,
        "files": files,
    }
