"""Errors a user can cause (bad config, paths, data, checkpoints).

They are caught at the edge (``run.py``) and reported as one sentence with exit code 2.
Programming errors use the ordinary exception types and keep their traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""
