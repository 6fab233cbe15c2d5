"""``python -m lab.cli``: the same as the ``sockredir-lab`` command."""

import sys

from lab.cli import main

sys.exit(main())
