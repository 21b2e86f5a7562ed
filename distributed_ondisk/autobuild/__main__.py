import sys

from distributed_ondisk.autobuild.cli import cli

sys.exit(cli())
