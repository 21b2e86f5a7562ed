#!/usr/bin/env python3
"""Serve a subset of horizontal shards for distributed search.

    python search_server.py --shards hslices/hslice_0000_of_0004.index,hslices/hslice_0001_of_0004.index \\
        --host 0.0.0.0 --port 12010 --secret-file ~/.distributed_ondisk.secret

The shards are opened and checked first; only then does the server listen, so
a server answering ping is ready.  Prints ``listening on HOST:PORT`` on stdout
(the actual port with --port 0).  Stops cleanly on SIGTERM / Ctrl-C.
"""

import sys

from distributed_ondisk.search.cli import serve_cli

if __name__ == "__main__":
    sys.exit(serve_cli())
