"""`python -m utcp` is the `utcp` command."""

import sys

from utcp.cli import main

sys.exit(main())
