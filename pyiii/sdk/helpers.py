"""Free-function helpers, mirroring the official ``iii.helpers`` module."""

from __future__ import annotations

from .channels import Channel, is_channel_ref
from .client import III

__all__ = ["create_channel", "create_channel_async", "is_channel_ref"]


def create_channel(iii: III, buffer_size: int | None = None) -> Channel:
    return iii.create_channel(buffer_size)


async def create_channel_async(iii: III, buffer_size: int | None = None) -> Channel:
    return await iii.create_channel_async(buffer_size)
