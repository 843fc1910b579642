"""Launcher for the duet signaling server: ``python signaling_server.py --host 0.0.0.0 --port 8765``."""

import sys

from duet.signaling.server import main

if __name__ == "__main__":
    sys.exit(main())
