"""`ConfigError`: a user mistake in the configuration, reported as one line and exit status 2."""


class ConfigError(Exception):
    """A user mistake in the configuration; its message is one line naming the key and the problem.

    Entry points decorated with `exit_on_config_error` print it as `error: <message>` on stderr and
    exit with status 2 (`exit_code`), before anything starts.
    """

    exit_code = 2
