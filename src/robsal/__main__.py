import sys

from robsal.cli import main

sys.exit(main())
