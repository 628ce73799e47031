"""Offline ``verify_metadata``: the MONAI bundle metadata schema ships with this package.

MONAI's ``python -m monai.bundle verify_metadata`` downloads the schema named by the ``schema`` URL of
``configs/metadata.json`` into ``--filepath``; when that file already exists it is used as it is (no
download). The schema the bundles reference (``meta_schema_20240725.json`` of the MONAI project, copied
unchanged) is in ``medurwkv_net/bundle/schemas/``, so both of these work without network access::

    python -m medurwkv_net verify-metadata configs/metadata.json
    python -m monai.bundle verify_metadata --meta_file configs/metadata.json \\
        --filepath "$(python -c 'import medurwkv_net.bundle.metadata as m; print(m.metadata_schema_path())')"

Validation needs ``jsonschema`` (a dependency of this package).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["SCHEMA_DIR", "DEFAULT_SCHEMA", "metadata_schema_path", "verify_metadata"]

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DEFAULT_SCHEMA = "meta_schema_20240725.json"


def metadata_schema_path(schema: Optional[str] = None) -> str:
    """The shipped schema file for a ``schema`` URL (or file name) of a metadata.json; default: the one the
    bundles use.

    Raises:
        FileNotFoundError: no schema of that name ships with the package (the message lists those that do).
    """
    name = DEFAULT_SCHEMA if not schema else schema.rstrip("/").rsplit("/", 1)[-1]
    path = SCHEMA_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))
        raise FileNotFoundError(
            f"no shipped metadata schema named {name!r} (from {schema!r}); shipped: {shipped}. Point the "
            "metadata's 'schema' at one of them, or pass schema_file=<a local copy of the schema>."
        )
    return str(path)


def verify_metadata(
    meta_file: Union[str, os.PathLike] = "configs/metadata.json", schema_file: Optional[str] = None
) -> str:
    """Validate a bundle's metadata.json with MONAI's ``verify_metadata`` against the shipped schema (offline).

    Args:
        meta_file: the bundle's ``configs/metadata.json``.
        schema_file: a schema file to use instead of the shipped one named by the metadata's ``schema`` URL.

    Returns:
        the schema file used.

    Raises:
        FileNotFoundError: ``meta_file`` or the schema is missing.
        ValueError: ``meta_file`` is not JSON, or does not satisfy the schema (MONAI's message: which key
            failed which rule).
    """
    meta = Path(meta_file)
    if not meta.is_file():
        raise FileNotFoundError(f"metadata file {meta} does not exist; pass the bundle's configs/metadata.json")
    try:
        url = json.loads(meta.read_text()).get("schema")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"metadata file {meta} is not a JSON object: {e}") from e
    if schema_file is None:
        if not url:
            raise ValueError(
                f"metadata file {meta} has no 'schema' key; add the schema URL "
                f"(e.g. one ending in {DEFAULT_SCHEMA}) or pass schema_file=..."
            )
        schema_file = metadata_schema_path(url)
    elif not Path(schema_file).is_file():
        raise FileNotFoundError(f"schema file {schema_file} does not exist")
    from monai.bundle import verify_metadata as monai_verify_metadata

    monai_verify_metadata(meta_file=str(meta), filepath=str(schema_file), create_dir=False)
    return str(schema_file)
