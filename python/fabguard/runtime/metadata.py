"""fabguard metadata inside an ONNX file (``metadata_props`` key ``fabguard``, a JSON object).

Every artifact says what it is (``artifact``: e.g. ``anomaly-detector``, ``active-network``) and its
``format_version``; each kind of artifact names the keys and types it needs, and :func:`read_metadata`
checks them, so a foreign, crafted or truncated file is refused with what is wrong before a session is
created. Reading parses the protobuf only: no graph runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from fabguard.errors import ModelFileError

KEY = "fabguard"
FORMAT_VERSION = 1


def attach(model_proto, metadata: Mapping) -> None:
    """Store ``metadata`` (JSON-serialisable) in an ``onnx.ModelProto``."""
    import onnx

    onnx.helper.set_model_props(model_proto, {KEY: json.dumps({**metadata, "format_version": FORMAT_VERSION})})


def read_metadata(path: str | os.PathLike, artifact: str, required: Mapping[str, type | tuple] = ()) -> dict:
    """The metadata of the ONNX file ``path``, checked: it is a fabguard ``artifact`` of this format
    version and has every key of ``required`` with a value of the given type(s)."""
    import onnx

    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model artifact") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not an ONNX model artifact") from None
    except Exception as exc:  # protobuf raises its own DecodeError, and others for truncated files
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__}); the file is damaged or of "
                             "another kind") from None
    if not model.graph.node and not model.graph.input:
        raise ModelFileError(f"{path}: not an ONNX model (no graph: empty or foreign file)")
    props = {p.key: p.value for p in model.metadata_props}
    if KEY not in props:
        raise ModelFileError(f"{path}: an ONNX model without fabguard metadata (not exported by fabguard)")
    try:
        meta = json.loads(props[KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: fabguard metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: fabguard metadata is not a JSON object")
    if meta.get("artifact") != artifact:
        raise ModelFileError(f"{path}: a {meta.get('artifact')!r} artifact, expected {artifact!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: artifact format {meta.get('format_version')!r}, this fabguard reads "
                             f"{FORMAT_VERSION}")
    for key, kind in dict(required).items():
        kinds, value = kind if isinstance(kind, tuple) else (kind,), meta.get(key)
        # JSON true / false are Python bools, which are ints too: accept them only where bool is asked for
        if key not in meta or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ModelFileError(f"{path}: fabguard metadata key {key!r} is missing or not "
                                 f"{' or '.join(k.__name__ for k in kinds)} (got {value!r})")
    return meta
