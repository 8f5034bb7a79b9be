import sys

from budgetsearch.cli import main

sys.exit(main())
