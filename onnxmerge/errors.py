"""The one exception type for problems a user can cause and fix."""


class OnnxMergeError(Exception):
    """A user-fixable problem: one sentence naming the file, key or tensor and what to do.

    The CLI prints the message and exits non-zero, never a traceback. Bugs in onnxmerge itself
    raise ordinary Python exceptions instead, so they are not mistaken for bad input.
    """
