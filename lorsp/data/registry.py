"""Which source loads which spec: the one table a new family of data sets is added to.

A :class:`Source` names the spec kinds it answers and what may follow ``kind:`` in a spec; the
grammar in :mod:`lorsp.data.spec` and the valid-names hint in its errors are read from this table,
so adding a source means one module under :mod:`lorsp.data.sources` and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lorsp.data.sources.base import Indexer, Loader, RowReader
from lorsp.data.sources.builtin import load_digits, load_synthetic
from lorsp.data.sources.imagefolder import index_imagefolder, load_imagefolder, read_imagefolder_rows
from lorsp.data.sources.parquet import index_parquet, load_parquet, read_parquet_rows
from lorsp.data.sources.torchvision_sets import TORCHVISION_DATASETS, load_torchvision

__all__ = ["SOURCES", "Argument", "Source", "argument_kinds", "source_for"]

#: What may follow ``kind:``: nothing (""), an optional positive count ("N"), a required path ("PATH").
Argument = Literal["", "N", "PATH"]


@dataclass(frozen=True)
class Source:
    """One family of data sets: the spec kinds it answers, its loader and its spec argument.

    ``index`` lists the rows without decoding them and ``read`` decodes any of them; sources that
    have both can be streamed (``data.stream``), the others are always decoded into memory.
    """

    names: tuple[str, ...]
    load: Loader
    argument: Argument = ""
    index: Indexer | None = None
    read: RowReader | None = None


#: Every source, in the order the valid-spec hint lists them.
SOURCES: tuple[Source, ...] = (
    Source(("digits",), load_digits),
    Source(("synthetic",), load_synthetic, argument="N"),
    Source(("imagefolder",), load_imagefolder, argument="PATH", index=index_imagefolder, read=read_imagefolder_rows),
    Source(("parquet",), load_parquet, argument="PATH", index=index_parquet, read=read_parquet_rows),
    Source(TORCHVISION_DATASETS, load_torchvision),
)

_BY_KIND: dict[str, Source] = {name: source for source in SOURCES for name in source.names}


def source_for(kind: str) -> Source | None:
    """The source that loads spec kind ``kind`` (already lower case, '_' for '-'), or None."""
    return _BY_KIND.get(kind)


def argument_kinds() -> list[tuple[str, Argument]]:
    """The kinds that take an argument after ':' and which one, in table order."""
    return [(name, s.argument) for s in SOURCES if s.argument for name in s.names]
