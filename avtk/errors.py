"""The one exception type that reaches users as a clean message and a non-zero exit."""


class AvtkError(Exception):
    """Bad input or a failed precondition; the message names the file and the utterance."""
