import sys

from bidirect.cli import main

sys.exit(main())
