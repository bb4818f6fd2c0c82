"""pgfleet: distributed PostgreSQL from stock parts."""

from .errors import PgfleetError

__version__ = "0.1.0"

__all__ = ["PgfleetError", "__version__"]
