"""``python -m dtq_worker``: the same as ``dtq-worker``."""

from __future__ import annotations

from dtq_worker.cli import main

if __name__ == "__main__":
    main(prog_name="dtq-worker")
