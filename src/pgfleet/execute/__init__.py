"""The only code that writes to servers: connections and driver-error wrapping."""

from .connect import Conn, Endpoint, connect, describe_error

__all__ = ["Conn", "Endpoint", "connect", "describe_error"]
