"""``python -m segstream``: the same as the ``segstream`` command."""

import sys

from segstream.cli import main

sys.exit(main())
