"""The one exception type the CLI turns into a single readable line instead of a traceback."""


class MelanomaError(Exception):
    """A problem with the user's input or files; the message names the file, row or field and what is wrong."""
