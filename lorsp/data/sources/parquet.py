"""``parquet:PATH``: Hugging Face style Parquet, an encoded-image column and a label column.

``PATH`` is one file (one pool that the seed splits) or a directory: files whose path below it
contains 'test' form the test split, 'val'/'validation'/'dev' the validation split, the rest the
training split (with no test file, the validation files are the held-out split). Labels may be
integers or strings (strings are mapped to the class names of the ``datasets`` metadata, else to
their sorted set). Read with pyarrow, imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lorsp.data.containers import ImageSplit
from lorsp.data.decode import decode_many, decode_source
from lorsp.data.sources.base import DatasetSpec, Loaded, LoadOptions, resolve_path
from lorsp.errors import DataError

__all__ = ["load_parquet"]

_READ_BATCH_ROWS = 512


class _Columns(NamedTuple):
    """What the files' schemas say about the two columns, checked before any row is read."""

    image_kind: dict[Path, str]  # per file: "binary" (the bytes) or "struct" (HF {bytes, path})
    class_names: list[str] | None  # from the `datasets` metadata, when a file has it
    string_labels: bool  # labels are class names rather than integer ids


def _parquet_role(rel: Path) -> str:
    """Which split a parquet file belongs to, from its path below the data directory."""
    text = "/".join(rel.parts).lower()
    if "test" in text:
        return "test"
    tokens = {t for t in "".join(ch if ch.isalnum() else " " for ch in text).split()}
    if tokens & {"val", "valid", "validation", "dev"}:
        return "val"
    return "train"


def _roles(path: Path) -> dict[Path, str]:
    """Every parquet file under ``path`` (sorted) and the split it feeds."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"parquet directory {path} has no .parquet files")
        roles = {f: _parquet_role(f.relative_to(path)) for f in files}
    else:
        roles = {path: "train"}
    if "train" not in roles.values():
        # Guessing which named split to train on would silently change the protocol.
        raise DataError(
            f"parquet directory {path} has no training files (every file name contains "
            "'test' or 'val'); put the training data in a file without those words"
        )
    if "test" not in roles.values() and "val" in roles.values():
        roles = {f: ("test" if r == "val" else r) for f, r in roles.items()}
    return roles


def _hf_class_names(schema: Any, label_column: str) -> list[str] | None:
    """Class names from the ``huggingface`` schema metadata that ``datasets`` writes, if any."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feats = json.loads(meta)["info"]["features"][label_column]
        names = feats.get("names")
        return [str(x) for x in names] if names else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _check_columns(files: list[Path], image_column: str, label_column: str) -> _Columns:
    """Read every file's schema and refuse a missing or mistyped column in one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_kind: dict[Path, str] = {}
    names: list[str] | None = None
    string_labels = False
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read parquet file {f} ({str(e).splitlines()[0]})") from e
        cols = schema.names
        missing = [c for c in (image_column, label_column) if c not in cols]
        if missing:
            raise DataError(
                f"parquet file {f} has no column {', '.join(repr(m) for m in missing)}; its columns "
                f"are {', '.join(cols)}: set data.image_column / data.label_column"
            )
        itype = schema.field(image_column).type
        if pa.types.is_binary(itype) or pa.types.is_large_binary(itype):
            image_kind[f] = "binary"
        elif pa.types.is_struct(itype) and itype.get_field_index("bytes") >= 0:
            image_kind[f] = "struct"
        else:
            raise DataError(
                f"parquet column '{image_column}' in {f} has type {itype}; expected encoded image "
                "bytes or a struct with a 'bytes' field (set data.image_column)"
            )
        ltype = schema.field(label_column).type
        if pa.types.is_string(ltype) or pa.types.is_large_string(ltype):
            string_labels = True
        elif not pa.types.is_integer(ltype):
            raise DataError(
                f"parquet column '{label_column}' in {f} has type {ltype}; expected integer class "
                "ids or class-name strings (set data.label_column)"
            )
        names = names or _hf_class_names(schema, label_column)
    return _Columns(image_kind, names, string_labels)


def _blobs(col: Any, kind: str, f: Path) -> list[Any]:
    """One batch's images as encoded bytes, or as a file path where HF stored only the path."""
    if kind != "struct":
        return col.to_pylist()
    paths = col.field("path").to_pylist() if col.type.get_field_index("path") >= 0 else None
    blobs = col.field("bytes").to_pylist()
    if paths is not None:
        # HF stores either the bytes or, for local data sets, only a path.
        blobs = [
            b if b is not None else (str(f.parent / p) if p else None)
            for b, p in zip(blobs, paths, strict=True)
        ]
    return blobs


def _read_split(
    files: list[Path], columns: _Columns, options: LoadOptions
) -> tuple[Tensor, list[Any]]:
    """Decode the images of one split's files into one uint8 tensor; return it and the raw labels."""
    import pyarrow.parquet as pq

    image_size, image_column, label_column = options.image_size, options.image_column, options.label_column
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labs: list[Any] = []
    pos = 0
    for f in files:
        pf = pq.ParquetFile(f)
        row = 0  # within `f`, as pyarrow and pandas number it: the row a user can go and fix
        for batch in pf.iter_batches(batch_size=_READ_BATCH_ROWS, columns=[image_column, label_column]):
            blobs = _blobs(batch.column(0), columns.image_kind[f], f)
            lab = batch.column(1).to_pylist()
            for i, (blob, value) in enumerate(zip(blobs, lab, strict=True)):
                if blob is None:
                    raise DataError(
                        f"parquet:{f} row {row + i}: image '{image_column}' is empty; fix or drop that row"
                    )
                if value is None:
                    raise DataError(
                        f"parquet:{f} row {row + i}: label '{label_column}' is empty; fix or drop that row"
                    )
            decode_many(
                list(enumerate(blobs, start=row)),
                image_size,
                lambda item, f=f: decode_source(item[1], image_size, f"parquet:{f} row {item[0]}",
                                                "fix or drop that row"),
                out,
                start=pos,
            )
            labs.extend(lab)
            pos += len(lab)
            row += len(lab)
    return out, labs


def _class_ids(raw_labels: dict[str, list[Any]], columns: _Columns) -> tuple[dict[str, Tensor], list[str]]:
    """Each split's labels as int64 class ids, and the class names they index."""
    names = columns.class_names
    if columns.string_labels:
        classes = names or sorted({str(x) for labs in raw_labels.values() for x in labs})
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(x) for labs in raw_labels.values() for x in labs} - set(index))
        if unknown:
            raise DataError(f"parquet labels {unknown[:5]} are not in the class names {classes[:10]}")
        labels = {
            r: torch.as_tensor([index[str(x)] for x in labs], dtype=torch.int64)
            for r, labs in raw_labels.items()
        }
    else:
        labels = {r: torch.as_tensor(labs, dtype=torch.int64) for r, labs in raw_labels.items()}
        top = max(int(t.max()) for t in labels.values() if len(t))
        classes = names if names and len(names) > top else [str(i) for i in range(top + 1)]
    return labels, classes


def load_parquet(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """Decode the file or directory at ``spec.arg`` into its parts (see the module docstring)."""
    assert spec.arg is not None  # the spec grammar requires a path
    path = resolve_path("parquet", spec.arg)
    roles = _roles(path)
    files = list(roles)
    columns = _check_columns(files, options.image_column, options.label_column)
    by_role: dict[str, list[Path]] = {}
    for f in files:
        by_role.setdefault(roles[f], []).append(f)
    images: dict[str, Tensor] = {}
    raw_labels: dict[str, list[Any]] = {}
    for role, fs in by_role.items():
        images[role], raw_labels[role] = _read_split(fs, columns, options)
    labels, classes = _class_ids(raw_labels, columns)
    parts = {r: ImageSplit(images[r], labels[r]) for r in images}
    total = sum(len(p) for p in parts.values())
    where = f"{len(files)} file{'s' if len(files) > 1 else ''}: " + "+".join(sorted(by_role))
    size = options.image_size
    source = f"parquet {path} ({total} images, {len(classes)} classes, {where}, resized to {size}x{size})"
    return Loaded(parts, len(classes), classes, source)
