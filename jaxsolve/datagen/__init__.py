"""Training data for neural operators: ``(parameter field, solution)`` pairs of
a family of PDE systems, generated fast by sorted Krylov recycling (SKR, Wang et
al., ICLR 2024) and written as resumable, checksummed shards.

Command line (``python -m jaxsolve.datagen --help``)::

    python -m jaxsolve.datagen darcy --systems 1000 --grid 64 --out data/darcy64

Reading back, in the original system order::

    data = jaxsolve.datagen.load("data/darcy64")
    data["params"], data["solutions"], data["ok"]  # (1000, 64, 64), ..., (1000,)

How it works: the systems are split into groups of ``--shard-size`` along a
Hilbert curve through a few low cosine modes of each field (independent of the
number of devices); each group is sorted greedily and solved by GCRO-DR carrying
its own recycle space, one group per device (``shard_map``), and written as one
shard (temporary file, fsync, rename). Every solution's residual is recomputed
before it is saved; a failed system keeps its result code, ``ok=False`` and a NaN
solution. A rerun skips the shards whose checksums match the manifest.
"""

from ._load import iter_shards as iter_shards
from ._load import load as load
from ._run import FAMILIES as FAMILIES
from ._run import RunOptions as RunOptions
from ._run import generate as generate
from ._shards import DatagenError as DatagenError
