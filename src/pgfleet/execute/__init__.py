"""The only code that writes to servers: connections, running steps, wrapping driver errors."""

from .connect import Endpoint, connect, describe_error
from .runner import run_steps

__all__ = ["Endpoint", "connect", "describe_error", "run_steps"]
