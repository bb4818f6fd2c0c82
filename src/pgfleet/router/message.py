"""The base of the typed wire-protocol messages (:mod:`.protocol`, :mod:`.handshake`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .wire import Reader, frame


class Message:
    """A typed message; subclasses are frozen dataclasses with ``TYPE`` and a payload codec."""

    TYPE: ClassVar[bytes] = b""

    def payload(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return frame(self.TYPE, self.payload())

    @classmethod
    def read(cls, r: Reader) -> Message:
        return cls()


def empty(type_byte: bytes, name: str) -> type[Message]:
    """A message without payload (Sync, Flush, ParseComplete, …)."""
    return dataclass(frozen=True)(type(name, (Message,), {"TYPE": type_byte, "__doc__": f"{name} (no payload)."}))
