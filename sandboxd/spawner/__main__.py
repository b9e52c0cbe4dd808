"""``python -m sandboxd.spawner FD``: the spawner as its own program (used by the service)."""

import sys

from sandboxd.spawner.server import main

if len(sys.argv) != 2 or not sys.argv[1].isdigit():
    sys.exit("usage: python -m sandboxd.spawner SOCKET_FD")
main(int(sys.argv[1]))
