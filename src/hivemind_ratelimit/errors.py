"""The exception tree. Each error knows its gRPC status and its metric label.

Errors are raised deep in the code and translated once: at the gRPC boundary
(status + message), in the admin HTTP layer (HTTP status) and in the CLI (exit code).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class HivemindError(Exception):
    """Base of every error Hivemind raises on purpose."""

    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    metric_label: str = "internal"


class InvalidRequest(HivemindError):
    """A ShouldRateLimit request that breaks the input bounds."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    metric_label = "invalid_request"


class ListenError(HivemindError):
    """A port or socket the service should listen on cannot be bound (in use, bad path)."""

    metric_label = "listen"


class SettingsError(HivemindError):
    """The service configuration (config.yaml, environment, flags) is invalid."""

    metric_label = "settings"


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One problem in a rule file: where it is and what is wrong."""

    file: str
    location: str  # path inside the file, e.g. descriptors[0].rate_limit.unit
    line: int  # 1-based; 0 when unknown
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.location:
            where += f": {self.location}"
        return f"{where}: {self.message}"


class RuleConfigError(HivemindError):
    """One or more rule files are invalid; carries every problem found."""

    metric_label = "rule_config"

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
