"""``python -m rlkit`` runs the CLI."""

from rlkit.cli.app import main

main()
