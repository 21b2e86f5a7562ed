#!/usr/bin/env python3
"""RPC utilities: `keygen PATH`, `ping HOST:PORT`, `methods HOST:PORT`, `serve-echo`.

`python rpc.py ping HOST:PORT --timeout 60 --secret-file F` exits 0 once a server
answers: launch scripts wait on it instead of sleeping.
"""

import sys

from distributed_ondisk.rpc.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
