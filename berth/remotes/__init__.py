"""Talking to OCI distribution registries: resolve, fetch, push."""

from berth.remotes.remotes import Fetcher, Pusher, Resolver

__all__ = ["Fetcher", "Pusher", "Resolver"]
