"""``python -m dtq_client``: the ``dtq-client`` CLI."""

from __future__ import annotations

from dtq_client.cli import main

main()
