"""``python -m edge_biformer`` runs the CLI."""

import sys

from edge_biformer.cli.main import main

sys.exit(main())
