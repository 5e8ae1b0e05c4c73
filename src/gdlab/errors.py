"""The one exception type for user mistakes.

The entry point prints a GdlabError as a single line and exits non-zero; anything else is a
programming error and keeps its traceback.
"""


class GdlabError(ValueError):
    """A mistake in the user's input: a bad config value, a missing device, a corrupt file."""
