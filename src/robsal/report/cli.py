"""Subcommands of robsal.report (placeholder until the stage lands)."""


def register(sub) -> None:  # noqa: ANN001
    return None
