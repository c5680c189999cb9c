"""`python -m geolocsft` is the `geolocsft` command."""

import sys

from geolocsft.cli import main

sys.exit(main())
