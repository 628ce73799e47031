"""``medurwkv-net prepare-data``: write the datalist of an unpacked public dataset and print what it holds."""

from __future__ import annotations

from pathlib import Path

from medurwkv_net.data import (
    DEFAULT_FRACTIONS,
    as_dataset_error,
    check_nkut_options,
    describe_datalist,
    is_nkut,
    reader_kwargs,
)
from medurwkv_net.data.splits import ensure_with_report

__all__ = ["prepare_data_cli"]


def prepare_data_cli(
    dataset: str,
    dataset_dir: str,
    output: str = "datalist.json",
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    include_normal: bool | None = None,
) -> str:
    """Write the datalist of a public dataset unpacked under DATASET_DIR, printing the split sizes.

    Every image and mask is decoded (a truncated or corrupt file is named), mask sizes are compared with
    their images, and cases with empty masks are counted. nkut (CBCT volumes): every volume and label map is
    read and checked against its image's grid, the 4-class label maps and the axial slices of the training
    and validation cases are written beside OUTPUT (see ``medurwkv_net.data.nkut``).

    The split is the official one where the release has it, else seeded train/validation/test fractions.

    Args:
        dataset: one of isic2017, isic2018, glas, tdd, busi, kvasir, nkut.
        dataset_dir: the folder the archive(s) were unpacked into.
        output: the datalist to write (nkut: the axial slices and label volumes are written in its folder).
        seed: seed of the split, for releases without an official one.
        fractions: training, validation and test fractions of a seeded split.
        image_dir: another image sub-folder, for the images/ + masks/ layout (tdd) and nkut's images/.
        mask_dir: another mask sub-folder, likewise (nkut: the label folder, instead of labels/).
        include_normal: busi only: also the normal cases (default: benign + malignant).

    Returns:
        The path written.
    """
    if is_nkut(dataset):
        from medurwkv_net.data import nkut

        check_nkut_options(include_normal)
        path = nkut.prepare(
            dataset_dir, output, seed=seed, fractions=fractions, image_dir=image_dir, label_dir=mask_dir
        )
        print(nkut.summary(path))
        return path
    try:
        kwargs = reader_kwargs(dataset, image_dir, mask_dir, include_normal)
        datalist, report = ensure_with_report(
            dataset, dataset_dir, output, seed=seed, fractions=fractions, always_check=True, **kwargs
        )
    except (ValueError, OSError, KeyError) as e:
        raise as_dataset_error(e) from e
    path = str(Path(output).resolve())
    print(describe_datalist(datalist, report, path))
    return path
