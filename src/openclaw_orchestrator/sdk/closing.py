"""``with``/``async with`` for objects whose ``close()``/``aclose()`` releases them.

One definition of the context-manager protocol for the SDK's clients and transports and for
the instance drivers, so that each class states only how it closes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["AsyncClosesOnExit", "ClosesOnExit"]


class ClosesOnExit(ABC):
    """``with obj:`` gives ``obj`` and calls ``obj.close()`` on the way out."""

    __slots__ = ()

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosesOnExit(ABC):
    """``async with obj:`` gives ``obj`` and awaits ``obj.aclose()`` on the way out."""

    __slots__ = ()

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the object holds."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
