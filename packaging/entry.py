"""The bundle's one executable, `geolocsft`:

    geolocsft                      open the desktop app
    geolocsft --self-test [MODEL]  offscreen check of the bundle (see desktop/selftest.py)
    geolocsft COMMAND ...          the command line, as installed from the package
                                   (`geolocsft app FOLDER`, `geolocsft models import ...`)
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv:
        from desktop.app import main as app_main

        return app_main([])
    if argv[0] == "--self-test":
        from desktop.selftest import main as self_test

        return self_test(argv[1:])
    from geolocsft.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
