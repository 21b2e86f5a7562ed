import sys

from distributed_ondisk.autobuild.cli import main

sys.exit(main())
