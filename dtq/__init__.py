"""The dtq.v1 wire contract.

``dtq.v1`` holds the Python code generated from ``protos/dtq/v1`` by
``make protos``; it is never edited by hand. Applications use
:mod:`dtq_client` and :mod:`dtq_worker`, which keep protobuf types at the edge.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dtq")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
