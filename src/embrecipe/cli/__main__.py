import sys

from embrecipe.cli import main

sys.exit(main())
