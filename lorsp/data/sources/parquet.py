"""``parquet:PATH``: Hugging Face style Parquet, an encoded-image column and a label column.

``PATH`` is one file (one pool that the seed splits) or a directory: files whose path below it
contains 'test' form the test split, 'val'/'validation'/'dev' the validation split, the rest the
training split (with no test file, the validation files are the held-out split). Labels may be
integers or strings (strings are mapped to the class names of the ``datasets`` metadata, else to
their sorted set). Read with pyarrow, imported only here. :func:`index_parquet` reads only the
labels and the row groups, for streaming; :func:`read_parquet_rows` decodes any rows of it.

A damaged file is one :class:`~lorsp.errors.DataError` line wherever it is read: a footer pyarrow
cannot read names the file, a page it cannot read (or whose checksum fails, where the file has
them) the file, row group and rows, an image PIL cannot decode the file and row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lorsp.data.containers import ImageSplit
from lorsp.data.decode import decode_many, decode_source
from lorsp.data.manifest import Manifest
from lorsp.data.sources.base import DatasetSpec, Loaded, LoadOptions, resolve_path
from lorsp.errors import DataError

__all__ = ["index_parquet", "load_parquet", "read_parquet_rows"]

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


def _reason(err: BaseException) -> str:
    """pyarrow's message on one line (some span two: "Couldn't deserialize thrift: ...\\nDeserializing
    page header failed.")."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return (text[:200] + "...") if len(text) > 200 else text or type(err).__name__


def _unreadable(err: BaseException) -> bool:
    """Whether pyarrow failed on the file's bytes (a damaged or truncated file), not for want of memory."""
    import pyarrow as pa

    return isinstance(err, (OSError, pa.ArrowException)) and not isinstance(err, MemoryError)


def _open(f: Path) -> Any:
    """The file's ``ParquetFile``, its footer read; page checksums are verified where the file has them.

    A file whose footer cannot be read (truncated, not Parquet) is one line naming it.
    """
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f, page_checksum_verification=True)
    except Exception as e:
        if _unreadable(e):
            raise DataError(f"cannot read parquet file {f} ({_reason(e)})") from e
        raise


def _damaged(f: Path, pf: Any, group: int, err: BaseException) -> DataError:
    """One line for a row group pyarrow cannot read: the file, the row group and its rows (as pyarrow and
    pandas number a file's rows), pyarrow's reason and the fix."""
    meta = pf.metadata
    first = sum(meta.row_group(g).num_rows for g in range(group))
    last = first + meta.row_group(group).num_rows - 1
    return DataError(f"cannot read parquet file {f}: row group {group} (rows {first} to {last}) is damaged "
                     f"({_reason(err)}); download or write the file again")


def _row_groups(f: Path, pf: Any, columns: list[str], batch_size: int) -> Iterator[tuple[int, Any]]:
    """Every record batch of ``columns`` with the file row it starts at, one row group after another.

    Read a row group at a time so that bytes pyarrow cannot read (a page overwritten inside the
    file, its footer intact) are reported with the row group they sit in.
    """
    row = 0
    for group in range(pf.metadata.num_row_groups):
        batches = pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as e:
                if _unreadable(e):
                    raise _damaged(f, pf, group, e) from e
                raise
            yield row, batch
            row += batch.num_rows


def _read_row_group(f: Path, pf: Any, group: int, columns: list[str]) -> Any:
    """One row group's ``columns`` as a table; bytes pyarrow cannot read are one line naming the rows."""
    try:
        return pf.read_row_group(group, columns=columns)
    except Exception as e:
        if _unreadable(e):
            raise _damaged(f, pf, group, e) from e
        raise


def _check_columns(files: list[Path], image_column: str, label_column: str) -> _Columns:
    """Read every file's schema and refuse a missing or mistyped column in one line."""
    import pyarrow as pa

    image_kind: dict[Path, str] = {}
    names: list[str] | None = None
    string_labels = False
    for f in files:
        schema = _open(f).schema_arrow
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
    image_size, image_column, label_column = options.image_size, options.image_column, options.label_column
    opened = {f: _open(f) for f in files}
    n = sum(pf.metadata.num_rows for pf in opened.values())
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labs: list[Any] = []
    pos = 0
    for f, pf in opened.items():
        # `row`: within `f`, as pyarrow and pandas number it: the row a user can go and fix
        for row, batch in _row_groups(f, pf, [image_column, label_column], _READ_BATCH_ROWS):
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


def _files_by_role(path: Path) -> dict[str, list[Path]]:
    """The split each file feeds, files in sorted order within a split, splits in first-seen order."""
    roles = _roles(path)
    by_role: dict[str, list[Path]] = {}
    for f in roles:
        by_role.setdefault(roles[f], []).append(f)
    return by_role


def _source_line(path: Path, total: int, classes: list[str], by_role: dict[str, list[Path]], size: int) -> str:
    n = sum(len(fs) for fs in by_role.values())
    where = f"{n} file{'s' if n > 1 else ''}: " + "+".join(sorted(by_role))
    return f"parquet {path} ({total} images, {len(classes)} classes, {where}, resized to {size}x{size})"


def load_parquet(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """Decode the file or directory at ``spec.arg`` into its parts (see the module docstring)."""
    assert spec.arg is not None  # the spec grammar requires a path
    path = resolve_path("parquet", spec.arg)
    by_role = _files_by_role(path)
    columns = _check_columns(sorted(f for fs in by_role.values() for f in fs), options.image_column,
                             options.label_column)
    images: dict[str, Tensor] = {}
    raw_labels: dict[str, list[Any]] = {}
    for role, fs in by_role.items():
        images[role], raw_labels[role] = _read_split(fs, columns, options)
    labels, classes = _class_ids(raw_labels, columns)
    parts = {r: ImageSplit(images[r], labels[r]) for r in images}
    total = sum(len(p) for p in parts.values())
    return Loaded(parts, len(classes), classes, _source_line(path, total, classes, by_role, options.image_size))


def index_parquet(spec: DatasetSpec, options: LoadOptions) -> Manifest:
    """Every row's file, row and label without decoding an image: reads only the label column and the
    files' metadata (row counts, row groups), in :func:`load_parquet`'s order."""
    assert spec.arg is not None  # the spec grammar requires a path
    path = resolve_path("parquet", spec.arg)
    by_role = _files_by_role(path)
    files = [f for fs in by_role.values() for f in fs]  # the order load_parquet decodes them in
    columns = _check_columns(sorted(files), options.image_column, options.label_column)
    raw_labels: dict[str, list[Any]] = {role: [] for role in by_role}
    row_groups: list[np.ndarray] = []
    rows_per_file: list[int] = []
    for role, fs in by_role.items():
        for f in fs:
            pf = _open(f)
            meta = pf.metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            row_groups.append(np.cumsum([0, *sizes])[:-1].astype(np.int64))
            labs = [value for g in range(meta.num_row_groups)
                    for value in _read_row_group(f, pf, g, [options.label_column]).column(0).to_pylist()]
            for row, value in enumerate(labs):
                if value is None:
                    raise DataError(
                        f"parquet:{f} row {row}: label '{options.label_column}' is empty; fix or drop that row"
                    )
            rows_per_file.append(len(labs))
            raw_labels[role].extend(labs)
    labels, classes = _class_ids(raw_labels, columns)
    counts = np.array(rows_per_file, dtype=np.int64)
    file_index = np.repeat(np.arange(len(files), dtype=np.int32), counts)
    row_in_file = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    parts, start = {}, 0
    for role in by_role:
        n = len(labels[role])
        parts[role] = np.arange(start, start + n, dtype=np.int64)
        start += n
    return Manifest(
        kind="parquet", files=[str(f) for f in files], file_index=file_index, row_in_file=row_in_file,
        labels=np.concatenate([labels[r].numpy() for r in by_role]), parts=parts,
        num_classes=len(classes), class_names=classes, image_size=options.image_size,
        source=_source_line(path, start, classes, by_role, options.image_size),
        image_column=options.image_column, image_kinds=[columns.image_kind[f] for f in files], row_groups=row_groups,
    )


def read_parquet_rows(manifest: Manifest, rows: np.ndarray, out: np.ndarray) -> None:
    """Decode manifest ``rows`` into ``out[i]`` (uint8 [S, S, 3]), reading each row group once."""
    import pyarrow as pa

    size, column = manifest.image_size, manifest.image_column
    files = manifest.file_index[rows]
    for f in np.unique(files):
        in_file = np.nonzero(files == f)[0]
        local = manifest.row_in_file[rows[in_file]]
        starts = manifest.row_groups[f]
        group = np.searchsorted(starts, local, side="right") - 1
        path = Path(manifest.files[f])
        pf = _open(path)
        for g in np.unique(group):
            sel = in_file[group == g]
            col = _read_row_group(path, pf, int(g), [column]).column(0).combine_chunks()
            taken = col.take(pa.array(local[group == g] - starts[g]))
            blobs = _blobs(taken, manifest.image_kinds[f], path)
            for i, blob, row in zip(sel, blobs, local[group == g]):
                if blob is None:
                    raise DataError(f"parquet:{path} row {row}: image '{column}' is empty; fix or drop that row")
                out[i] = decode_source(blob, size, f"parquet:{path} row {row}", "fix or drop that row")
