"""The one exception type that reaches users as a one-line message."""


class PhotongapError(Exception):
    """Bad input or a failed precondition, explained for the user.

    The command line prints the message on one line and exits with code 2; a Python
    caller can catch it. Programming errors stay ordinary exceptions with tracebacks.
    """
