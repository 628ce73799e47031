"""A miniature NKUT-like CBCT release: tiny volumes with a bone block and two teeth, laid out as the NKUT
reader documents, with the quirks a real copy may have.

``make_nkut(root)`` writes ``root/NKUT/NKUT/`` (a doubled top folder) holding ``images/`` and
``labels/{tooth,bone,binary}/`` plus a details document and a macOS resource fork. The five cases use every
reader path: ``.nii.gz``, an upper-case ``.NII.GZ``, an uncompressed ``.nii``, an NRRD volume (LPS space) and
a DICOM series folder; one bone map is stored as 0/255, the bone maps carry a ``_bone`` suffix. The returned
:class:`SyntheticNkut` holds, for every case, the 4-class map the reader must build.
Shared by tests/data and tests/bundles (import it by path or with tests/data on sys.path).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (32, 32, 8)
SPACING = (0.4, 0.4, 0.5)
CASES = ("NKUT_001", "NKUT_002", "NKUT_003", "NKUT_004", "NKUT_005")


@dataclass
class SyntheticNkut:
    dataset_dir: Path                 # what the user passes (the unpacking folder)
    release_root: Path                # the folder holding images/ and labels/
    images: dict[str, Path] = field(default_factory=dict)
    classes: dict[str, np.ndarray] = field(default_factory=dict)  # case -> expected class-index map (x, y, z)


def _structures(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, tooth map, bone map): a bone block holding a wisdom tooth and a second molar, shifted per case."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    bone = ((x >= 4) & (x < 28) & (y >= 6 + i % 3) & (y < 22) & (z >= 1) & (z < 7)).astype(np.uint8)
    tooth = np.zeros(SHAPE, np.uint8)
    tooth[(x - 10 - i) ** 2 + (y - 14) ** 2 + ((z - 4) * 2) ** 2 <= 16] = 1  # wisdom tooth
    tooth[(x - 22) ** 2 + (y - 13 - i % 2) ** 2 + ((z - 4) * 2) ** 2 <= 12] = 2  # second molar
    image = 100 + 20 * rng.standard_normal(SHAPE)
    image[bone > 0] += 700
    image[tooth > 0] += 1400
    return image.astype(np.float32), tooth, bone


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _dicom_series(folder: Path, volume: np.ndarray) -> None:
    """One CT slice file per z (no extension, as scanners write them), 0.4 x 0.4 mm pixels, 0.5 mm apart."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    values = np.round(volume).astype(np.int16)
    for k in range(values.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "synthetic", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, SPACING[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [SPACING[0], SPACING[1]], SPACING[2]
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)


def make_nkut(root, cases=CASES) -> SyntheticNkut:
    """Write the miniature release under ``root`` (see the module docstring)."""
    import nrrd

    base = Path(root) / "NKUT" / "NKUT"
    images, labels = base / "images", base / "labels"
    images.mkdir(parents=True)
    (base / "details.docx").write_bytes(b"PK\x03\x04 case details")  # the release's document: not a case
    (images / "._NKUT_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    rel = SyntheticNkut(Path(root), base)
    rng = np.random.default_rng(7)
    ras = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # the LPS grid of the DICOM series, in RAS
    for i, case in enumerate(cases):
        image, tooth, bone = _structures(i, rng)
        affine = ras.copy()
        if i == 2:  # NRRD in LPS space, origin (2, 3, 4) mm: (-2, -3, 4) in RAS
            path = images / f"{case}.nrrd"
            nrrd.write(str(path), image, {"space": "left-posterior-superior", "space directions": np.diag(SPACING),
                                          "space origin": [2.0, 3.0, 4.0]})
            affine[:3, 3] = [-2.0, -3.0, 4.0]
        elif i == 3:
            path = images / case
            _dicom_series(path, image)
            image = np.round(image)
        else:
            path = images / (f"{case}.NII.GZ" if i == 1 else f"{case}.nii" if i == 4 else f"{case}.nii.gz")
            _nifti(path, image, affine)
        rel.images[case] = path
        bone_values = bone * (255 if i == 1 else 1)
        _nifti(labels / "tooth" / f"{case}.nii.gz", tooth, affine)
        _nifti(labels / "bone" / f"{case}_bone.nii.gz", bone_values.astype(np.uint8), affine)
        _nifti(labels / "binary" / f"{case}.nii.gz", ((tooth > 0) | (bone > 0)).astype(np.uint8), affine)
        expected = np.where(bone > 0, 3, 0).astype(np.uint8)
        expected[tooth == 1], expected[tooth == 2] = 1, 2
        rel.classes[case] = expected
    return rel
