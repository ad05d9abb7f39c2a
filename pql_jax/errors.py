"""The one error type that reaches users as a single line and exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, CLI argument, CSV, ...).

    The CLI prints ``error: <message>`` on one line and exits with status 2, no traceback.
    Raise it before anything is written, so results already on disk stay intact.
    """
