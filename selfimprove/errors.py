"""User mistakes are `UserError`: the CLI prints its one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (recipe, data, model path, reward). The message names the cause."""
