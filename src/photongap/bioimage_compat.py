"""A fix, applied only where needed, for bioimageio.spec serialising nothing under recent pydantic.

bioimageio.spec 0.5.12 (which bioimageio.core 0.11 pins) calls pydantic's wrap-serializer
handlers as ``handler(value, info)``, as older pydantic documented. pydantic-core 2.50
(pydantic 2.14) reads the second argument as an ``index_key`` and rejects the info object, so
every description with a file in it fails to validate or package ("'index_key' is expected to
be an integer or a string"). :func:`ensure_serialisable` detects that and makes the three
serializers call ``handler(value)``; with a compatible pydantic it changes nothing.
"""

from __future__ import annotations

from typing import Any


def _forward(first: Any, handler: Any, info: Any) -> Any:
    # Becomes the code of each broken serializer: `_photongap_unpatched` is that function's
    # original, stored in its own module's globals (each of the three lives in its own module).
    return _photongap_unpatched(first, lambda value, *ignored: handler(value), info)  # noqa: F821


def _broken() -> bool:
    from pathlib import Path

    from bioimageio.spec._internal.io_packaging import FileDescr_package
    from pydantic import BaseModel

    class Probe(BaseModel):
        file: FileDescr_package

    try:
        Probe.model_validate({"file": {"source": Path(__file__)}}).model_dump(mode="json")
    except Exception as error:  # pydantic wraps the TypeError in its own serialization error
        return "index_key" in str(error)
    return False


def ensure_serialisable() -> bool:
    """Make bioimageio.spec's serializers work with the installed pydantic; True if they needed it."""
    from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
    from bioimageio.spec.model import v0_4

    if getattr(io_packaging, "_photongap_unpatched", None) is not None or not _broken():
        return False
    targets = [
        (io_packaging.__dict__, io_packaging.package_file_descr_serializer),
        (v0_4.__dict__, v0_4.package_weights),
        (validated_string_with_inner_node.__dict__, validated_string_with_inner_node.ValidatedStringWithInnerNode._serialize),
    ]
    for namespace, function in targets:
        function = getattr(function, "__func__", function)
        original = type(function)(function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__)
        namespace["_photongap_unpatched"] = original
        function.__code__ = _forward.__code__
    return True
