"""NKUT (pediatric mandibular wisdom teeth; Zhou et al., IEEE JBHI 2024): a CBCT release of about 30 volumes
with three label maps per case, ``binary``, ``tooth`` and ``bone``, handed out on request. Its file names are
not public, so the reader takes the layout documented in :mod:`.release` and matches cases by name.

- :mod:`.release`: finding the image volumes and label maps and pairing them by case;
- :mod:`.labels`: reading volumes with MONAI's ``LoadImage`` and building the 4-class label map (background,
  wisdom tooth, second molar, alveolar bone);
- :mod:`.prepare`: the seeded split by case, axial slices for the 2D network, whole volumes for evaluation,
  inference and the 3D variant, and the datalist (what the bundle's ``prepare_data`` and
  ``python -m medurwkv_net prepare-data nkut`` run).
"""

from __future__ import annotations

from .labels import CLASS_NAMES, load_volume, read_label_map
from .prepare import DEFAULT_PERCENTILES, EMPTY_SLICE_FRACTION, list_volumes, output_name, prepare, summary
from .release import VOLUME_EXTENSIONS, Case, NkutRelease, read_release

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_PERCENTILES",
    "EMPTY_SLICE_FRACTION",
    "VOLUME_EXTENSIONS",
    "Case",
    "NkutRelease",
    "list_volumes",
    "load_volume",
    "output_name",
    "prepare",
    "read_label_map",
    "read_release",
    "summary",
]
