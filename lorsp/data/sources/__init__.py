"""Where images come from: one module per family of data sets, each with one ``load`` function.

Every source returns a :class:`~lorsp.data.sources.base.Loaded` (the data set's official parts,
its classes and a one-line description); :mod:`lorsp.data.registry` maps a spec's kind to the
source that answers it, and :mod:`lorsp.data.splits` turns the parts into the fixed splits.
"""
