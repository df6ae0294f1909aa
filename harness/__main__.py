"""``python -m harness``: the ``pfmbench`` command (how a training job is started in an image)."""

from harness.cli import main

main()
