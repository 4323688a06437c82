"""``python -m mipic.cli``: the same entry point as the ``mipic`` script."""

from mipic.cli import main

main()
