"""Image classification data for prompt tuning: load once, keep uint8, batch on the device.

Why this shape: a hyperparameter search runs many short trials over the *same* small data set.
Decoding JPEGs and running PIL transforms per sample per epoch (a torch ``DataLoader`` with
workers) costs more than the prompt's forward pass on a GPU and multiplies across concurrent
trials. So every loader decodes its images exactly once into a ``uint8`` tensor (a few hundred
MB at most for the data sets this project targets), the :class:`Splits` object is plain tensors
(picklable, so a Ray driver can put it in the object store once and every trial shares it), and
:class:`BatchIterator` moves a split to the device once and then only gathers, converts, resizes
and augments batches there, without a host-device synchronisation per batch.

Evaluation protocol: the splits are a pure function of the spec and the seed. Where a data set
has an official test split it is used as is and the validation split is ``val_fraction`` of the
training data; otherwise ``test_fraction`` of the pool becomes the test split first and
validation is taken from the rest. Splits are stratified by class. The test split never depends
on ``val_fraction`` or ``max_train``, so changing those cannot leak test images. Validation is
what a search selects on; the test split is only reported.

The package, one job per module (the flow runs down the list):

* :mod:`~lorsp.data.containers`: :class:`ImageSplit` and :class:`Splits`, plain tensors.
* :mod:`~lorsp.data.seeding`: independent random streams from one seed.
* :mod:`~lorsp.data.splits`: the seeded, stratified train / validation / test splits.
* :mod:`~lorsp.data.decode`: PIL decoding to uint8, many images on a thread pool.
* :mod:`~lorsp.data.sources`: one module per family of data sets (builtin, imagefolder,
  parquet, torchvision), each a ``load(spec, options)``.
* :mod:`~lorsp.data.registry`: which source loads which spec kind.
* :mod:`~lorsp.data.spec`: the ``data.dataset`` grammar (see there for the spec strings).
* :mod:`~lorsp.data.load`: :func:`load_splits_for`, the one entry every caller uses.
* :mod:`~lorsp.data.batches`: :class:`BatchIterator`, batches and augmentation on the device.

Streaming (``data.stream``), for sets larger than memory:

* :mod:`~lorsp.data.manifest`: a set's rows and labels without decoding; :class:`StreamPlan`, the
  same splits as row indices.
* :mod:`~lorsp.data.order`: each epoch's windows of rows, from the seed.
* :mod:`~lorsp.data.mode`: in memory or streamed (``data.stream: auto``), and the line that says so.
* :mod:`~lorsp.data.streamed`: :class:`StreamedSplits` and :class:`StreamBatches`, what the
  training loop iterates (no Ray).
* :mod:`~lorsp.data.stream`: the Ray Data pipelines; the only module here that imports Ray, and
  nothing imports it but :mod:`lorsp.trial` and a single streamed run of :mod:`lorsp.train`.

:class:`DataError` lives in the torch-free :mod:`lorsp.errors` so the command line can catch it
without importing this package.
"""

from lorsp.data.batches import AUGMENT_MODES, BatchIterator
from lorsp.data.containers import ImageSplit, Splits
from lorsp.data.load import load_splits, load_splits_for, plan_stream, plan_stream_for, streamable
from lorsp.data.manifest import Manifest, StreamPlan
from lorsp.data.sources.builtin import BUILTIN_DATASETS
from lorsp.data.sources.torchvision_sets import TORCHVISION_DATASETS, torchvision_root
from lorsp.data.spec import validate_dataset_spec
from lorsp.data.streamed import StreamBatches, StreamedSplits, UInt8Stream
from lorsp.errors import DataError

__all__ = [
    "AUGMENT_MODES",
    "BUILTIN_DATASETS",
    "TORCHVISION_DATASETS",
    "BatchIterator",
    "DataError",
    "ImageSplit",
    "Manifest",
    "Splits",
    "StreamBatches",
    "StreamPlan",
    "StreamedSplits",
    "UInt8Stream",
    "torchvision_root",
    "load_splits",
    "load_splits_for",
    "plan_stream",
    "plan_stream_for",
    "streamable",
    "validate_dataset_spec",
]
