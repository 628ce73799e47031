"""What ``verify-data`` checks of a bundle: the datalist splits and the settings a bundle config implies.

This is the part of the data verification that knows bundle ids (``train#handlers``,
``<section>#dataset#data``, ``datalist_file``, ``prepare_data``, ``metadata.json``'s ``network_data_format``);
the checks themselves are :func:`medurwkv_net.reliability.verify_datalist`, which knows none of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from medurwkv_net.core.errors import DataVerificationError
from medurwkv_net.reliability.verify_cases import first_line
from medurwkv_net.reliability.verify_data import declared_settings, verify_datalist
from medurwkv_net.reliability.verify_report import VerificationReport

__all__ = ["bundle_verification", "root_cause", "verify_bundle_data"]


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps a failing config expression in ``RuntimeError: Failed
    to evaluate ...``; the user needs the error underneath)."""
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


def _bundle_meta(config_files: list[str], meta_file: str | None) -> dict:
    """The bundle's metadata: ``meta_file``, else ``metadata.json`` beside the first config, else ``{}``."""
    if meta_file is None:
        guess = Path(config_files[0]).parent / "metadata.json"
        meta_file = str(guess) if guess.is_file() else None
    if meta_file is None:
        return {}
    if not Path(meta_file).is_file():
        raise FileNotFoundError(f"meta_file '{meta_file}' does not exist")
    with open(meta_file) as f:
        return json.load(f)


def _from_meta(meta: Mapping) -> tuple[int | None, int | None, dict | None]:
    """Classes, image channels and ``channel_def`` of the metadata's first output and input."""
    fmt = meta.get("network_data_format", {}) if isinstance(meta, Mapping) else {}
    outputs, inputs = fmt.get("outputs", {}), fmt.get("inputs", {})
    num_classes = image_channels = channel_def = None
    if outputs:
        out = next(iter(outputs.values()))
        channel_def = out.get("channel_def") or None
        num_classes = len(channel_def) if channel_def else out.get("num_channels")
    if inputs:
        image_channels = next(iter(inputs.values())).get("num_channels")
    return num_classes, image_channels, channel_def


def _find_target(node: Any, suffix: str, path: str = "") -> str | None:
    """The config id of the first entry whose ``_target_`` ends with ``suffix``."""
    items: Any
    if isinstance(node, Mapping):
        if str(node.get("_target_", "")).endswith(suffix):
            return path
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for k, v in items:
        found = _find_target(v, suffix, f"{path}#{k}" if path else str(k))
        if found is not None:
            return found
    return None


def _conversion_settings(parser) -> dict:
    """``image_channels``/``convert_channels``/``eight_bit`` of the config's ``EnsureChannelsd`` (the conversion
    the pipeline applies to images), so that verification accepts what the pipeline converts."""
    for root in ("train#deterministic_transforms", "train#preprocessing", "validate#preprocessing", "preprocessing"):
        if root not in parser:
            continue
        at = _find_target(parser.get(root), "EnsureChannelsd", root)
        if at is None:
            continue
        out: dict[str, Any] = {
            "convert_channels": True,
            "image_channels": int(parser.get_parsed_content(f"{at}#channels")),
        }
        if f"{at}#eight_bit" in parser:
            out["eight_bit"] = bool(parser.get_parsed_content(f"{at}#eight_bit"))
        return out
    return {}


def _handler_settings(parser) -> dict:
    """Arguments of the first ``VerifyDataHandler`` in ``train#handlers`` (the bundle's own settings)."""
    try:
        handlers = parser.get("train#handlers")
    except Exception:
        return {}
    if not isinstance(handlers, list):
        return {}
    for i, h in enumerate(handlers):
        if isinstance(h, Mapping) and str(h.get("_target_", "")).endswith("VerifyDataHandler"):
            out = {}
            for k in h:
                if k.startswith("_") or k in ("datalist", "enabled", "every_run"):
                    continue
                out[k] = parser.get_parsed_content(f"train#handlers#{i}#{k}")
            return out
    return {}


def _datalist_splits(datalist_file: Any) -> dict[str, list]:
    """The splits (training, validation, test, then any other list of cases) of a datalist file, paths
    resolved as ``load_decathlon_datalist`` resolves them; ``{}`` when the file does not exist."""
    from monai.data import load_decathlon_datalist

    path = Path(str(datalist_file))
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataVerificationError(f"datalist '{path}' cannot be read as JSON: {first_line(e)}") from None
    keys = [k for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(c, Mapping) for c in v)]
    keys.sort(key=lambda k: (["training", "validation", "test"] + [k]).index(k))
    return {k: load_decathlon_datalist(str(path), True, k) for k in keys}


def bundle_verification(
    config_file: str | Sequence[str],
    dataset_dir: str | None = None,
    meta_file: str | None = None,
    num_classes: int | None = None,
    image_channels: int | None = None,
    allowed_channels: Sequence[int] | None = None,
    label_mode: str | None = None,
    label_threshold: float | None = None,
    sections: str | Sequence[str] | None = None,
    **override: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lists of cases and the :func:`verify_datalist` settings of a bundle config.

    Runs the config's ``prepare_data`` first. See :func:`medurwkv_net.cli.verify_data.verify_data_cli` for the
    arguments and where each setting comes from.

    Returns:
        ``(lists, settings)``: ``{split or section: cases}`` and the keyword arguments of :func:`verify_datalist`.

    Raises:
        FileNotFoundError: a config or the metadata file does not exist.
        DataVerificationError: the data preparation failed, or a section's data cannot be resolved.
        KeyError: the config has neither a datalist file nor any of the sections' ``dataset#data``.
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    files = [s.strip() for f in files for s in str(f).split(",") if s.strip()]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config file '{f}' does not exist")
    parser = ConfigParser()
    parser.read_config(files if len(files) > 1 else files[0])
    meta = _bundle_meta(files, meta_file)
    if meta:
        parser.read_meta(meta)
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    for k, v in override.items():
        parser[k] = v
    if "prepare_data" in parser:  # the bundle's explicit, idempotent data preparation (its training runs it first)
        try:
            parser.get_parsed_content("prepare_data")
        except Exception as e:
            root = root_cause(e)
            raise DataVerificationError(
                f"preparing the data ('prepare_data' of {', '.join(files)}) failed: "
                f"{str(root).strip() or type(root).__name__}"
            ) from None
    if "verify_data" in parser:
        parser["verify_data"] = False  # the datasets' own check would stop at the first failure; report all here

    settings: dict[str, Any] = {}
    m_classes, m_channels, channel_def = _from_meta(meta)
    if m_classes is not None:
        settings["num_classes"] = m_classes
    if m_channels is not None:
        settings["image_channels"] = m_channels
    if channel_def:
        settings["channel_def"] = channel_def
    for key in ("label_mode", "label_threshold"):
        if key in parser:
            settings[key] = parser.get_parsed_content(key)
    if "spatial_size" in parser:
        settings["spatial_dims"] = len(parser.get_parsed_content("spatial_size"))
    if "dataset_dir" in parser:
        settings["dataset_dir"] = parser.get_parsed_content("dataset_dir")
    settings.update(_conversion_settings(parser))
    settings.update(_handler_settings(parser))
    cli = {
        "num_classes": num_classes,
        "image_channels": image_channels,
        "allowed_channels": allowed_channels,
        "label_mode": label_mode,
        "label_threshold": label_threshold,
    }
    settings.update({k: v for k, v in cli.items() if v is not None})
    if settings.get("label_mode") == "mask":
        settings.pop("channel_def", None)

    lists: dict[str, Any] = {}
    if sections is None and "datalist_file" in parser:
        datalist_file = parser.get_parsed_content("datalist_file")
        lists = _datalist_splits(datalist_file)
        if lists:
            raw = json.loads(Path(str(datalist_file)).read_text())
            settings.update(declared_settings(raw, list(lists), settings.get("spatial_dims")))
            if settings.get("dataset_dir") is not None:  # as verify_datalist_file: files the preparation wrote
                settings["dataset_dir"] = [settings["dataset_dir"], str(Path(str(datalist_file)).parent)]
    if not lists:
        if sections is None:
            sections = ("train", "validate")
        if isinstance(sections, str):
            sections = [s.strip() for s in sections.split(",") if s.strip()]
        for sec in sections:
            key = f"{sec}#dataset#data"
            if key in parser:
                try:
                    data = parser.get_parsed_content(key)
                except Exception as e:
                    root = root_cause(e)
                    raise DataVerificationError(
                        f"cannot resolve '{key}' from {', '.join(files)}: {str(root).strip() or type(root).__name__}"
                    ) from None
                lists[sec] = data
        if not lists:
            raise KeyError(f"none of {[f'{s}#dataset#data' for s in sections]} is defined in {files}")
    return lists, settings


def verify_bundle_data(config_file: str | Sequence[str], **kwargs: Any) -> VerificationReport:
    """Verify every list of cases a bundle config reads (:func:`bundle_verification`, then
    :func:`verify_datalist`); return the report.

    Args:
        config_file: the bundle config(s), e.g. ``configs/train.json`` (a list or comma-separated to merge).
        **kwargs: the other arguments of :func:`bundle_verification`.
    """
    lists, settings = bundle_verification(config_file, **kwargs)
    return verify_datalist(lists, **settings)
