"""`python -m edgecnn ...` is the same as the `edgecnn` command."""

import sys

from edgecnn.cli import main

sys.exit(main())
