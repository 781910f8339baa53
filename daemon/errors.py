"""The exception root of ``daemon``; errors of the packages it uses are translated where they are handled."""


class DaemonError(Exception):
    """Root of every error the daemon package raises itself."""


class ConfigError(DaemonError):
    """The configuration is invalid; ``problems`` lists every ``(key, message)`` found, not only the first."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
