import sys

from pgsafe.cli.main import main

sys.exit(main())
