"""Entry point: ``python server.py [--port 8080] [--config config.toml]``, same as ``avatar serve``."""

import sys

from realtime.app import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
