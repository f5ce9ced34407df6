"""The one error type specprof raises for bad input; the CLI turns it into one line and exit code 2."""


class SpecprofError(Exception):
    """Bad input or usage: the message names the place and the fix."""
