"""Helper processes (the parsing and import pools) end with the process that started them."""

from __future__ import annotations

import os
import threading
import time


def watch_parent() -> None:
    """Pool initializer: exit once the parent is gone. A SIGKILLed ``monsisra serve`` cannot shut its
    pools down, and their workers never see end-of-file (each holds both ends of its task queue):
    without this they outlived it, holding memory, until the machine restarted."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="monsisra-parent-watch", daemon=True).start()
