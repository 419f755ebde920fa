"""The one exception type users see for input they can fix."""


class GsloraError(ValueError):
    """Bad input or state that the user can fix.

    The message is one sentence naming the problem and the fix; the CLI prints it and exits with status 2.
    """
