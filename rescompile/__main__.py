import sys

from rescompile.cli import main

sys.exit(main())
