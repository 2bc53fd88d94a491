"""``python -m dtq_server``."""

from dtq_server.cli import main

main()
