"""``python -m monsisra.cli``: the same as the ``monsisra`` command."""

from monsisra.cli import main

main()
