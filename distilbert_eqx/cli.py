"""The entry point of every script in ``experiments/``: ``raise SystemExit(run_script(main))``.

A `UserError` already says what to change, so it is printed as ``error: <message>`` on stderr with exit status
2 and no traceback, which would only bury it. Anything else is a bug and keeps its traceback. ``--debug`` (or
``DISTILBERT_EQX_DEBUG`` set to anything but ``""`` or ``"0"``) re-raises user errors and interrupts too.
"""

import os
import sys
from collections.abc import Callable

from .errors import UserError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "DISTILBERT_EQX_DEBUG"
USER_ERROR_STATUS = 2
# 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
INTERRUPTED_STATUS = 130


def run_script(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn the project's own errors into an exit status.

    **Arguments:**

    - `main`: the script's body; it receives the arguments without ``--debug``. Its return value is ignored.
    - `argv`: the command-line arguments; ``sys.argv[1:]`` by default.

    **Returns:**

    0 on success, 2 after a `UserError`, 130 after Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [arg for arg in args if arg != DEBUG_FLAG]
    try:
        main(args)
    except UserError as error:
        if debug:
            raise
        print(f"error: {str(error) or type(error).__name__}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0
