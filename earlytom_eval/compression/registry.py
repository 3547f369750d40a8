"""Compression methods by name: ``method: <name>`` in a config builds the class registered here."""

from __future__ import annotations

from .config import METHODS, CompressionConfig, ConfigError
from .methods import CompressionMethod, EarlyTomMethod, FullMethod
from .peers import FastVIDMethod, FastVMethod, HoliTomMethod, VisionZipMethod
from .peers_tome_dycoke import DyCokeMethod, ToMeMethod

__all__ = ["METHOD_CLASSES", "build_method", "registered_methods"]

#: Every method name of :data:`~.config.METHODS` that has an implementation, and its class.
METHOD_CLASSES: dict[str, type[CompressionMethod]] = {
    cls.name: cls
    for cls in (
        FullMethod, EarlyTomMethod, VisionZipMethod, HoliTomMethod, FastVIDMethod, FastVMethod, DyCokeMethod, ToMeMethod
    )
}


def registered_methods() -> tuple[str, ...]:
    """The method names that can run, in :data:`~.config.METHODS` order."""
    return tuple(name for name in METHODS if name in METHOD_CLASSES)


def build_method(config: CompressionConfig) -> CompressionMethod:
    """The method object for ``config.method``."""
    try:
        return METHOD_CLASSES[config.method](config)
    except KeyError:
        raise ConfigError(
            f"method {config.method!r} is not implemented yet (implemented: {', '.join(registered_methods())})"
        ) from None
