"""``python -m jaxmeta``: the ``jaxmeta`` command."""

import sys

from jaxmeta.cli import main

sys.exit(main())
