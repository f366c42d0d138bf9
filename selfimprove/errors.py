"""User mistakes are `UserError`: the CLI prints its one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (recipe, data, model path, reward). The message names the cause."""


class Interrupted(UserError):
    """A run stopped by a signal after saving: the CLI prints the message (the resume command) and exits
    with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.code = 128 + signum
