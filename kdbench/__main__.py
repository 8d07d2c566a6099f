"""``python -m kdbench`` is the ``kdbench`` command."""

import sys

from kdbench.cli import main

sys.exit(main())
