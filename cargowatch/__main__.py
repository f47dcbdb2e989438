import sys

from cargowatch.cli import main

sys.exit(main())
