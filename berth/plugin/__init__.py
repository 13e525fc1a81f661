"""Plugin registration and the daemon's configuration."""

from berth.plugin.registry import InitContext, Plugin, Registration, Registry

__all__ = ["InitContext", "Plugin", "Registration", "Registry"]
