"""``python -m modalign`` runs the command line."""

import sys

from modalign.cli import main

sys.exit(main())
