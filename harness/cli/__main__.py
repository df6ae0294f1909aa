"""``python -m harness.cli``: the ``pfmbench`` command."""

from harness.cli import main

main()
