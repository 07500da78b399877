"""``python -m medgen <task> ...`` behaves like the ``medgen`` console command."""

import sys

from medgen.cli import main

sys.exit(main())
