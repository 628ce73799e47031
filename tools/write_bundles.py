"""Maintainer tool: writes the six photo dataset bundles (``bundles/medurwkv_<dataset>/``) from the demo bundle.

The demo bundle ``bundles/medurwkv_mni152_tissue`` is the template: every dataset bundle is that bundle
with only the dataset's own ids changed (reader, classes, channels, input size, intensity and label
conventions, the paper recipe's schedule) and its own metadata and model card. Keeping the facts here,
once, and writing the bundles from them is what keeps the seven bundles from drifting apart::

    python tools/write_bundles.py            # rewrite bundles/medurwkv_<dataset>/ from the template
    python tools/write_bundles.py --check    # list files that differ (what the tests check)

It is not part of the installed package: it writes into this repository's ``bundles/``. The NKUT bundle
(CBCT volumes, sliced for the 2D network) and the 3D bundles are written by hand.

``multi_gpu_train.json``, ``logging.conf`` and ``LICENSE`` are the template's own. The transform chains are
MONAI transforms listed in the JSON: ``train#deterministic_transforms`` (to 0..1 and 256x256),
``train#random_transforms`` (the imaging domain's augmentations, ``AUGMENTATIONS``, on the 0..1 image) and
``train#normalize_transforms`` (ImageNet mean/std), the first and last shared with validation through ``%``
macros. The project's own transforms are ``EnsureChannelsd`` and ``LoadMaskd`` (uniting and binarising the
releases' mask files) and the augmentations MONAI lacks (``medurwkv_net/data/augment.py``: colour jitter,
H&E stain jitter, JPEG, speckle).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from medurwkv_net.data.releases import get_release
from medurwkv_net.pretrained.registry import get_pretrained_cfg

__all__ = ["DATASETS", "render_bundle", "write_bundles"]

COPIED = ("configs/multi_gpu_train.json", "configs/logging.conf", "LICENSE")

DATASETS = {
    "isic2017": dict(
        short="ISIC 2017", cls="lesion", in_channels=3, data_type="jpg",
        modality="dermoscopy (RGB photograph)", augment="dermoscopy",
        task="Binary segmentation of skin lesions in dermoscopy images",
        source="ISIC 2017 Challenge, Part 1: Lesion Segmentation - https://challenge.isic-archive.com/data/#2017 "
               "(archives ISIC-2017_Training_Data.zip, ISIC-2017_Training_Part1_GroundTruth.zip "
               "and the Validation / Test_v2 twins)",
        counts="2000 training, 150 validation, 600 test images",
        split="official: Training / Validation / Test_v2 folders",
        layout="""<dataset_dir>/
  ISIC-2017_Training_Data/ISIC_0000000.jpg            (ISIC_*_superpixels.png and the metadata CSV are ignored)
  ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
  ISIC-2017_Validation_Data/ ...  ISIC-2017_Validation_Part1_GroundTruth/ ...
  ISIC-2017_Test_v2_Data/ ...     ISIC-2017_Test_v2_Part1_GroundTruth/ ...""",
        masks="8-bit PNG, 0 = background, 255 = lesion (automatic threshold: > 127, or > 0 for 0/1 masks)",
        licence="""The ISIC 2017 challenge data are distributed by the International Skin Imaging Collaboration
(ISIC) under the terms stated on https://challenge.isic-archive.com/data/ and in the LICENSE.txt /
ATTRIBUTION.txt files inside the archives. Read them before use; they govern any use of the images
and masks, and of models trained on them.
Cite: N. C. F. Codella et al., "Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the
2017 International Symposium on Biomedical Imaging (ISBI)", arXiv:1710.05006.""",
        refs=["Codella et al., Skin Lesion Analysis Toward Melanoma Detection: A Challenge at ISBI 2017, "
              "arXiv:1710.05006"],
        paper=None,
    ),
    "isic2018": dict(
        short="ISIC 2018", cls="lesion", in_channels=3, data_type="jpg",
        modality="dermoscopy (RGB photograph)", augment="dermoscopy",
        task="Binary segmentation of skin lesions in dermoscopy images",
        source="ISIC 2018 Challenge, Task 1: Lesion Boundary Segmentation - "
               "https://challenge.isic-archive.com/data/#2018 "
               "(archives ISIC2018_Task1-2_Training_Input.zip, ISIC2018_Task1_Training_GroundTruth.zip "
               "and the Validation / Test twins)",
        counts="2594 training, 100 validation, 1000 test images",
        split="official: Training / Validation / Test folders (a missing Validation or Test pair is carved from "
              "Training with the seed and recorded in the datalist)",
        layout="""<dataset_dir>/
  ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg     (LICENSE.txt / ATTRIBUTION.txt are ignored)
  ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
  ISIC2018_Task1-2_Validation_Input/ ...  ISIC2018_Task1_Validation_GroundTruth/ ...
  ISIC2018_Task1-2_Test_Input/ ...        ISIC2018_Task1_Test_GroundTruth/ ...""",
        masks="8-bit PNG, 0 = background, 255 = lesion (automatic threshold: > 127, or > 0 for 0/1 masks)",
        licence="""The ISIC 2018 challenge data are distributed by the International Skin Imaging Collaboration
(ISIC) under the terms stated on https://challenge.isic-archive.com/data/ and in the LICENSE.txt /
ATTRIBUTION.txt files inside the archives (the images come from the HAM10000 and MSK collections).
Read them before use; they govern any use of the images and masks, and of models trained on them.
Cite: N. Codella et al., "Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by
the International Skin Imaging Collaboration (ISIC)", arXiv:1902.03368; P. Tschandl et al., "The
HAM10000 dataset", Sci. Data 5, 180161 (2018).""",
        refs=["Codella et al., Skin Lesion Analysis Toward Melanoma Detection 2018, arXiv:1902.03368",
              "Tschandl et al., The HAM10000 dataset, Scientific Data 5, 180161 (2018)"],
        paper=None,
    ),
    "glas": dict(
        short="GlaS", cls="gland", in_channels=3, data_type="bmp",
        modality="H&E histology (RGB)", augment="histology",
        task="Binary segmentation of glands in H&E-stained colon histology images",
        source="MICCAI 2015 Gland Segmentation Challenge (Warwick-QU dataset) - "
               "https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/",
        counts="165 images: 85 train, 60 testA, 20 testB",
        split="official train / testA + testB (test, the datalist keeps the subset name per case); "
              "validation = a seeded 1/9 of train (recorded in the datalist)",
        layout="""<dataset_dir>/
  Warwick QU Dataset (Released 2016_07_08)/        (any folder name; it is found up to two levels down)
    train_1.bmp  train_1_anno.bmp  ...  testA_1.bmp  testA_1_anno.bmp  ...  testB_1.bmp  testB_1_anno.bmp
    Grade.csv                                       (ignored)""",
        masks="BMP with gland instance ids (0 = background, 1..n = glands); foreground = id > 0 (label_threshold 0)",
        licence="""The Warwick-QU / GlaS dataset is provided by the Tissue Image Analytics Centre, University of
Warwick, for research purposes under the terms on
https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/ . Read them before use.
Cite: K. Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS challenge
contest", Medical Image Analysis 35 (2017) 489-502.""",
        refs=["Sirinukunwattana et al., Gland segmentation in colon histology images: The GlaS challenge contest, "
              "Medical Image Analysis 35 (2017)"],
        paper=None,
    ),
    "tdd": dict(
        short="TDD", cls="teeth", in_channels=1, data_type="jpg",
        modality="panoramic dental X-ray (grey scale)", augment="radiograph",
        task="Binary segmentation of teeth in panoramic dental radiographs",
        source="Tufts Dental Database - http://tdd.ece.tufts.edu/ (access on request)",
        counts="1000 panoramic radiographs",
        split="no official split: seeded 80/10/10 split (seed `split_seed`, recorded in the datalist)",
        layout="""<dataset_dir>/                       (the folder the Tufts archives were unpacked into)
  Radiographs/1.JPG  Radiographs/2.JPG ...     (upper-case .JPG, numbered with gaps;
                                                Radiographs/Radiographs/ is found too)
  Segmentation/teeth_mask/1.jpg ...            (teeth masks, 3-channel JPEG, same numbers)
  Segmentation/maxillomandibular/ ...          (ignored)
  Expert/ ...  Student/ ...                    (ignored)""",
        layout_note=("""Extensions and folder names are matched in any case; empty teeth masks (edentulous patients) are
valid and counted by prepare-data. A copy laid out as images/ + masks/ (same file stems) is read too;
other folders: add to every command
  --image_subdir X --mask_subdir Y
(prepare-data: --image_dir X --mask_dir Y). When nothing is found, the error names these options and
the folders with images that it did find."""),
        masks="3-channel JPEG (or PNG), 0 = background, 255 = teeth (automatic threshold: > 127 in any colour "
              "channel, or > 0 for 0/1 masks); edentulous cases have empty masks",
        licence="""The Tufts Dental Database is provided by Tufts University on request, under the user agreement
presented on http://tdd.ece.tufts.edu/ (non-commercial research use). Read it before use.
Cite: K. Panetta, R. Rajendran, A. Ramesh, S. Rao, S. Agaian, "Tufts Dental Database: A Multimodal
Panoramic X-Ray Dataset for Benchmarking Diagnostic Systems", IEEE Journal of Biomedical and Health
Informatics 26(4), 2022.""",
        refs=["Panetta et al., Tufts Dental Database: A Multimodal Panoramic X-Ray Dataset for Benchmarking "
              "Diagnostic Systems, IEEE JBHI 26(4), 2022"],
        paper=None,
    ),
    "busi": dict(
        short="BUSI", cls="lesion", in_channels=3, data_type="png",
        modality="breast ultrasound (grey scale, stored as PNG)", augment="ultrasound",
        task="Binary segmentation of breast lesions in ultrasound images",
        source="Dataset of breast ultrasound images (BUSI), Al-Dhabyani et al. - "
               "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        counts="780 images: 437 benign, 210 malignant, 133 normal; by default the 647 benign + malignant cases "
               "are used (the common benchmark setting), `--include_normal True` adds the 133 normal cases "
               "(empty masks)",
        split="no official split: seeded 80/10/10 split stratified by class (benign / malignant [/ normal]; "
              "seed `split_seed`, recorded in the datalist)",
        layout="""<dataset_dir>/
  Dataset_BUSI_with_GT/
    benign/benign (1).png  benign (1)_mask.png  [benign (1)_mask_1.png ...]
    malignant/ ...
    normal/ ...                               (empty masks; read only with include_normal true)""",
        layout_note="""Every `NAME_mask*.png` of a case is united into its label; a case with `NAME_mask_1.png` but no
`NAME_mask.png` is refused with the file named. RGB and RGBA masks are read (alpha dropped).
`include_normal` (config id, default false; prepare-data: `--include_normal True`) adds the normal cases.""",
        masks="PNG, 0 = background, 255 = lesion; a case with several masks (NAME_mask.png, NAME_mask_1.png, ...) "
              "is labelled with their union",
        licence="""BUSI was published by W. Al-Dhabyani, M. Gomaa, H. Khaled and A. Fahmy with the open-access article
"Dataset of breast ultrasound images", Data in Brief 28 (2020) 104863; the images are distributed from
https://scholar.cu.edu.eg/?q=afahmy/pages/dataset under the terms stated there and in the article.
Read them before use and cite the article.""",
        refs=["Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28 (2020) 104863"],
        paper="Med-URWKV paper, ablation on BUSI: Dice 77.98 % with the ImageNet-pretrained encoder, "
              "51.17 % trained from scratch",
    ),
    "kvasir": dict(
        short="Kvasir-SEG", cls="polyp", in_channels=3, data_type="jpg",
        modality="colonoscopy (RGB photograph)", augment="endoscopy",
        task="Binary segmentation of polyps in colonoscopy images",
        source="Kvasir-SEG, Simula - https://datasets.simula.no/kvasir-seg/ (archive kvasir-seg.zip)",
        counts="1000 images",
        split="no official split: seeded 80/10/10 split (seed `split_seed`, recorded in the datalist)",
        layout="""<dataset_dir>/
  Kvasir-SEG/images/NAME.jpg
  Kvasir-SEG/masks/NAME.jpg          (same names)
  Kvasir-SEG/kavsir_bboxes.json      (ignored)""",
        masks="JPEG masks (compression noise around 0/255): foreground = any channel > 127",
        licence="""Kvasir-SEG is provided by Simula Research Laboratory for research and educational purposes under
the terms stated on https://datasets.simula.no/kvasir-seg/ . Read them before use.
Cite: D. Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MultiMedia Modeling (MMM) 2020,
LNCS 11962, 451-462.""",
        refs=["Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020"],
        paper=None,
    ),
}


def _load(template: Path, name: str) -> dict:
    return json.loads((template / "configs" / name).read_text())


def _insert_after(cfg: dict, after: str, new: dict) -> dict:
    """``cfg`` with the items of ``new`` right after key ``after`` (moved there if they existed)."""
    out = {}
    for k, v in cfg.items():
        if k not in new:
            out[k] = v
        if k == after:
            out.update(new)
    return out


def _swap_imports(imports: list[str]) -> list[str]:
    out = []
    for i in imports:
        i = "$import medurwkv_net.data" if "mni152" in i else i
        if i not in out:
            out.append(i)
    return out


FOLDER_LAYOUT = ("tdd",)  # images/ + masks/ releases: the sub-folder names are config ids
IMAGENET_MEAN = get_pretrained_cfg("tiny").mean  # the VRWKV encoder's ImageNet normalisation (pretrained registry)
IMAGENET_STD = get_pretrained_cfg("tiny").std
IMAGE_LABEL = ["image", "label"]


def _common_ids(name: str) -> dict:
    ids = {
        "dataset_name": name,
        "dataset_dir": "$@bundle_root + '/data'",
        "split_seed": 0,
        "datalist_file": "$@bundle_root + '/datalist.json'",
    }
    if name == "tdd":  # null: the Tufts archive's Radiographs/ + Segmentation/teeth_mask/, or images/ + masks/
        ids.update(image_subdir=None, mask_subdir=None)
    if name == "busi":
        ids.update(include_normal=False)
    return ids


def _reader_args(name: str) -> str:
    if name == "busi":
        return ", include_normal=@include_normal"
    return ", image_dir=@image_subdir, mask_dir=@mask_subdir" if name in FOLDER_LAYOUT else ""


def _mean_std(in_channels: int) -> tuple[list[float], list[float]]:
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [round(sum(IMAGENET_MEAN) / 3, 6)], [round(sum(IMAGENET_STD) / 3, 6)]


def _normalize(d: dict) -> dict:
    """ImageNet mean/std per channel (the encoder's pretraining)."""
    mean, std = _mean_std(d["in_channels"])
    return {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": mean, "divisor": std,
            "channel_wise": True}


def _image_chain(d: dict, normalize: bool = True) -> list[dict]:
    """Load an image and bring it to the network's channels and intensities in 0..1 (original size), then
    to ImageNet intensities unless ``normalize`` is false (training augments in 0..1 and normalises after)."""
    chain = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "medurwkv_net.data.EnsureChannelsd", "keys": "image", "channels": "@in_channels",
         "eight_bit": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 255.0, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
    ]
    return chain + [_normalize(d)] if normalize else chain


def _with_label(chain: list[dict]) -> list[dict]:
    """The image chain with the mask read beside it (as one binary channel, float)."""
    out = [dict(t) for t in chain]
    at = next(i for i, t in enumerate(out) if t["_target_"] == "EnsureTyped")
    out[at:at + 1] = [
        {"_target_": "medurwkv_net.data.LoadMaskd", "keys": "label", "threshold": "@label_threshold"},
        {"_target_": "EnsureTyped", "keys": IMAGE_LABEL, "dtype": "$torch.float32"},
    ]
    return out


def _resize(keys) -> dict:
    if keys == "image":
        return {"_target_": "Resized", "keys": "image", "spatial_size": "@spatial_size", "mode": "bilinear"}
    return {"_target_": "Resized", "keys": keys, "spatial_size": "@spatial_size", "mode": ["bilinear", "nearest"]}


def _aug(target: str, why: str, keys="image", **args) -> tuple[dict, str]:
    return {"_target_": target, "keys": keys, **args}, why


_OWN = "medurwkv_net.data."  # the augmentations MONAI lacks (medurwkv_net/data/augment.py)
_SMOOTH = dict(sigma_x=[0.5, 1.5], sigma_y=[0.5, 1.5])
# Augmentations of the 0..1 image after Resized, before NormalizeIntensityd: (config entry, why).
GEOMETRY = [  # photographs, histology, radiographs: no orientation to keep; images from many devices
    _aug("RandFlipd", "no orientation to keep", IMAGE_LABEL, spatial_axis=0, prob=0.5),
    _aug("RandFlipd", "no orientation to keep", IMAGE_LABEL, spatial_axis=1, prob=0.5),
    _aug("RandRotate90d", "no orientation to keep", IMAGE_LABEL, prob=0.5, max_k=3),
    _aug("RandZoomd", "object size and field of view differ between devices", IMAGE_LABEL, prob=0.3,
         min_zoom=0.85, max_zoom=1.15, mode=["bilinear", "nearest"], padding_mode="constant"),
]
AUGMENTATIONS = {  # per imaging domain: (one line on why, entries)
    "dermoscopy": ("dermatoscopes, clinics and skin types differ in illumination and colour, hand-held images "
                   "are often slightly out of focus, and the archives hold JPEGs of varying quality", [
        _aug(_OWN + "RandColorJitterd", "illumination, white balance, skin tone", brightness=[0.8, 1.2],
             contrast=[0.8, 1.2], saturation=[0.8, 1.2], hue=[-0.04, 0.04], prob=0.8),
        _aug("RandGaussianSmoothd", "defocus", **_SMOOTH, prob=0.2),
        _aug(_OWN + "RandJPEGd", "compression artefacts", quality=[30, 90], prob=0.2),
    ]),
    "endoscopy": ("the light source moves with the camera (strong brightness changes), video processors differ in "
                  "colour, frames blur with motion and are stored as JPEG", [
        _aug(_OWN + "RandColorJitterd", "illumination and processor colour (small hue: mucosa colour matters)",
             brightness=[0.7, 1.3], contrast=[0.7, 1.3], saturation=[0.8, 1.2], hue=[-0.03, 0.03], prob=0.8),
        _aug("RandGaussianSmoothd", "motion and defocus blur", sigma_x=[0.5, 2.0], sigma_y=[0.5, 2.0], prob=0.3),
        _aug(_OWN + "RandJPEGd", "compression artefacts", quality=[30, 90], prob=0.2),
    ]),
    "histology": ("H&E staining differs between laboratories, batches and scanners (colour), and slide scans have "
                  "out-of-focus regions", [
        _aug(_OWN + "RandHEStainJitterd", "stain variation: each stain's optical density scaled and shifted",
             alpha=[0.9, 1.1], beta=[-0.05, 0.05], prob=0.8),
        _aug(_OWN + "RandColorJitterd", "scanner illumination and white balance", brightness=[0.9, 1.1],
             contrast=[0.9, 1.1], saturation=[0.9, 1.1], hue=[-0.02, 0.02], prob=0.5),
        _aug("RandGaussianSmoothd", "out-of-focus regions", **_SMOOTH, prob=0.2),
    ]),
    "radiograph": ("grey-level X-ray images (no colour): exposure, detector gain and the units' grey-level curves "
                   "differ, low doses add quantum noise, patients move, and the release is JPEG", [
        _aug(_OWN + "RandColorJitterd", "exposure and gain (brightness, contrast)", brightness=[0.8, 1.2],
             contrast=[0.8, 1.2], prob=0.5),
        _aug("RandAdjustContrastd", "grey-level curve (gamma)", gamma=[0.7, 1.5], prob=0.3),
        _aug("RandGaussianSmoothd", "motion blur", **_SMOOTH, prob=0.2),
        _aug("RandGaussianNoised", "quantum noise (standard deviation drawn up to 0.03)", mean=0.0, std=0.03,
             prob=0.2),
        _aug(_OWN + "RandJPEGd", "compression artefacts", quality=[30, 90], prob=0.2),
    ]),
    "ultrasound": ("grey-level images (stored as RGB, kept grey): gain, dynamic range and grey map are set per "
                   "scanner and operator, and speckle strength varies with probe, frequency and filters", [
        _aug(_OWN + "RandColorJitterd", "gain and dynamic range (brightness, contrast)", brightness=[0.8, 1.2],
             contrast=[0.8, 1.2], prob=0.5),
        _aug("RandAdjustContrastd", "grey map (gamma)", gamma=[0.7, 1.5], prob=0.3),
        _aug(_OWN + "RandSpeckleNoised", "speckle: multiplicative gamma noise, one field for the three channels",
             std=[0.05, 0.2], distribution="gamma", same_for_channels=True, prob=0.3),
        _aug("RandGaussianSmoothd", "speckle-reduction smoothing", **_SMOOTH, prob=0.2),
    ]),
}
_TO_TENSOR = {"_target_": "EnsureTyped", "keys": IMAGE_LABEL, "dtype": "$torch.float32", "track_meta": False}


def _augmentations(d: dict) -> list[tuple[dict, str]]:
    return GEOMETRY + AUGMENTATIONS[d["augment"]][1]


def _random_transforms(d: dict) -> list[dict]:
    """``train#random_transforms``: the domain's augmentations, then plain tensors for the batches."""
    return [dict(t) for t, _ in _augmentations(d)] + [dict(_TO_TENSOR)]


def _softmax() -> dict:
    return {"_target_": "Activationsd", "keys": "pred", "softmax": True}


def _invert(preprocessing: str) -> dict:
    return {"_target_": "Invertd", "keys": "pred", "transform": preprocessing, "orig_keys": "image",
            "nearest_interp": False, "to_tensor": True}


def _onehot() -> dict:
    return {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": "@out_channels"}


def _train_cfg(template: Path, name: str, d: dict) -> dict:
    cfg = _load(template, "train.json")
    cfg["imports"] = _swap_imports(cfg["imports"])
    cfg.pop("datalist_file")
    ids = _common_ids(name)
    ids["prepare_data"] = ("$medurwkv_net.data.prepare_datalist(@dataset_name, @dataset_dir, @datalist_file, "
                           f"@split_seed{_reader_args(name)})")
    cfg = _insert_after(cfg, "output_dir", ids)
    cfg["verified_datalist"] = cfg["verified_datalist"].replace(
        "label_mode='index'", "label_mode='mask', label_threshold=@label_threshold, image_channels=@in_channels, "
        "convert_channels=True, eight_bit=True")
    cfg["class_names"] = ["background", d["cls"]]
    cfg["in_channels"] = d["in_channels"]
    cfg["out_channels"] = 2
    cfg["spatial_size"] = [256, 256]
    cfg = _insert_after(cfg, "spatial_size", {"label_threshold": get_release(name).label_threshold})
    cfg["pretrained"] = True
    cfg["max_epochs"] = 100
    cfg["batch_size"] = 8
    cfg["learning_rate"] = 0.0001
    # Dice over the whole batch: releases with empty masks (BUSI's normal cases) give no per-image Dice
    cfg["loss"]["batch"] = True
    train = cfg["train"]
    # augmentations need the 0..1 image: normalisation is a chain of its own, after them (and in validation)
    train["deterministic_transforms"] = _with_label(_image_chain(d, normalize=False)) + [_resize(IMAGE_LABEL)]
    train["random_transforms"] = _random_transforms(d)
    train = _insert_after(train, "random_transforms", {"normalize_transforms": [_normalize(d)]})
    train["preprocessing"]["transforms"] = ("$@train#deterministic_transforms + @train#random_transforms"
                                            " + @train#normalize_transforms")
    cfg["train"] = train
    cfg["validate"] = {"deterministic_transforms": "%train#deterministic_transforms",
                       "normalize_transforms": "%train#normalize_transforms", **cfg["validate"]}
    cfg["validate"]["preprocessing"]["transforms"] = ("$@validate#deterministic_transforms"
                                                      " + @validate#normalize_transforms")
    cfg["validate"]["inferer"] = {"_target_": "medurwkv_net.reliability.SafeSimpleInferer", "spatial_dims": 2}
    for h in train["handlers"]:
        if isinstance(h, dict) and h.get("_target_", "").endswith("VerifyDataHandler"):  # masks, not index files
            h["label_mode"] = "mask"
            h["label_threshold"] = "@label_threshold"
            h["image_channels"] = "@in_channels"
            h["convert_channels"] = True
            h["eight_bit"] = True
    return cfg


def _evaluate_cfg(template: Path, name: str, d: dict) -> dict:
    """The template's evaluation with metrics in the original image space: only the image is resized for
    the network, the prediction is resized back (``Invertd``) and compared with the mask as it is stored."""
    cfg = _load(template, "evaluate.json")
    out = {
        "validate#preprocessing": {"_target_": "Compose",
                                   "transforms": _with_label(_image_chain(d)) + [_resize("image")]},
        "validate#postprocessing": {"_target_": "Compose", "transforms": [
            _softmax(), _invert("@validate#preprocessing"), _onehot()]},
    }
    out.update(cfg)
    out["validate#inferer#checkpoint"] = "$@ckpt_dir + '/model.pt'"
    if name == "glas":  # the challenge reports Test A and Test B separately
        handlers = out["validate#handlers"]
        at = next(i for i, h in enumerate(handlers) if h.get("_target_") == "StatsHandler")
        handlers.insert(at, {
            "_target_": "medurwkv_net.bundle.SubsetMetricReport",
            "metric_names": ["test_mean_dice", "test_mean_iou", "test_hd95"],
            "subset_key": "subset",
            "output_file": "$@output_dir + '/test_subsets.csv'",
        })
    return out


def _inference_cfg(template: Path, name: str, d: dict) -> dict:
    cfg = _load(template, "inference.json")
    cfg["imports"] = _swap_imports(cfg["imports"])
    cfg["input_dir"] = "$@bundle_root + '/input'"
    cfg["in_channels"] = d["in_channels"]
    cfg["out_channels"] = 2
    cfg["spatial_size"] = [256, 256]
    cfg["preprocessing"]["transforms"] = _image_chain(d) + [_resize("image")]
    cfg["inferer"] = {"_target_": "medurwkv_net.reliability.SafeSimpleInferer", "spatial_dims": 2,
                      "checkpoint": "$@ckpt_dir + '/model.pt'"}
    cfg["postprocessing"]["transforms"] = [
        _softmax(), _invert("@preprocessing"),
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_ext": ".png", "output_dtype": "$numpy.uint8", "writer": "PILWriter", "scale": 255,
         "resample": False, "separate_folder": False},
    ] + cfg["postprocessing"]["transforms"][-2:]  # the template's label for clients: [H, W] class indices, uint8
    # MONAI Label writes the label in the input's format unless the request names another: a JPG label (Kvasir-SEG's
    # and ISIC's photos are JPG) is lossy and holds values that are no class. Its monaibundle app adds a bundle's
    # displayable_configs to every inference request (and shows them among the client's options).
    cfg["displayable_configs"] = {"result_extension": ".png"}
    return cfg


PHOTO_CHANGELOG = {
    "0.3.0": "the imaging domain's augmentations (colour, stain, blur, JPEG, speckle, scale: see the card) declared "
    "in train#random_transforms, every probability and range a config id; ImageNet normalisation in "
    "train#normalize_transforms, after them and in validation",
}


def _metadata(template: Path, name: str, d: dict) -> dict:
    m = _load(template, "metadata.json")
    # the template's notes of the versions after the first, with the photo bundles' own where they differ
    notes = {v: PHOTO_CHANGELOG.get(v, note) for v, note in m["changelog"].items() if v != "0.1.0"}
    m["changelog"] = {
        **notes,
        "0.1.0": f"first release: Med-URWKV (VRWKV-T encoder, ImageNet-pretrained) for {d['short']}",
    }
    m["required_packages_version"] = {k: v for k, v in m["required_packages_version"].items() if k != "nilearn"}
    m["name"] = f"Med-URWKV {d['short']} segmentation"
    m["task"] = d["task"]
    m["description"] = ("Pure-RWKV U-Net (Med-URWKV, Vision-RWKV tiny encoder pretrained on ImageNet-1K) "
                        f"for {d['task'][0].lower() + d['task'][1:]}; "
                        f"reads the public {d['short']} release as it unpacks ({d['split']}).")
    m["data_source"] = d["source"]
    m["data_type"] = d["data_type"]
    m["image_classes"] = (f"{'RGB' if d['in_channels'] == 3 else 'single channel'} {d['modality']} image, "
                          "resized to 256x256, "
                          "intensity /255 then ImageNet mean/std normalisation")
    m["label_classes"] = f"0: background, 1: {d['cls']} ({d['masks']})"
    m["pred_classes"] = f"0: background, 1: {d['cls']}"
    m.pop("eval_metrics", None)
    if name == "busi":
        m["eval_metrics"] = {"mean_dice_paper_pretrained": 0.7798, "mean_dice_paper_scratch": 0.5117}
    m["intended_use"] = "Research on medical image segmentation; not for clinical use"
    m["references"] = [m["references"][0], m["references"][1]] + d["refs"]
    inp = m["network_data_format"]["inputs"]["image"]
    inp.update(modality=d["modality"], num_channels=d["in_channels"], spatial_shape=[256, 256], value_range=[],
               is_patch_data=False,
               channel_def={"0": "R", "1": "G", "2": "B"} if d["in_channels"] == 3 else {"0": "image"})
    out = m["network_data_format"]["outputs"]["pred"]
    out.update(num_channels=2, spatial_shape=[256, 256], is_patch_data=False,
               channel_def={"0": "background", "1": d["cls"]})
    return m


README = ("""# Med-URWKV {short} segmentation bundle

{task_sentence} with Med-URWKV. This is a MONAI bundle: `python -m monai.bundle run`, `monai.bundle
download` and MONAI Label's monaibundle app use it as is. Not for clinical use.

## Model Overview

Med-URWKV ("Med-URWKV: Pure RWKV With ImageNet Pre-training For Medical Image Segmentation",
arXiv:2506.10858) is a pure-RWKV U-Net: its encoder is the Vision-RWKV tiny (VRWKV-T) backbone, pretrained
on ImageNet-1K, and its decoder is made of RWKV blocks.
`medurwkv_net.create_medurwkv(spatial_dims=2, in_channels={in_channels}, out_channels=2, encoder="tiny")`
(a `medurwkv_net.MedURWKV`), about 14M parameters; encoder weights `vrwkv_t_in1k_224.pth` from the Hub repo
`OpenGVLab/Vision-RWKV` (`pretrained: true`{chan_note}), used by training only: evaluation and inference build
the network with `pretrained: false` and read `models/model.pt`.

## Data

- Source: {source}
- Size: {counts}
- Licence: see [data_license.txt](data_license.txt). The data are not part of this bundle; download them
  from the source and accept its terms.
- Labels: {masks}.
- Split: {split}.

### Preparation

Unpack the archive(s) and pass the folder they were unpacked into as `dataset_dir` (the release folder
itself, or a folder one or two levels above it, works too). Expected layout:

```
{layout}
```
{layout_note}
Reading a config prepares nothing. Training and evaluation run `prepare_data` when they read their data:
it reads the release, checks that every mask has the size of its image, and writes `datalist.json` in the
bundle folder (rewritten only when the release, the seed or the split changed). To prepare it by hand and
see the split sizes:

```
python -m medurwkv_net prepare-data {name} <dataset_dir> --output datalist.json --seed 0
```

prepare-data decodes every image and mask of every split (a truncated or corrupt file is named), checks
that every mask has the size of its image, and counts the cases with empty masks. To check the data as
the bundle reads it (channel conversion, mask binarisation) for the training, validation and test splits:

```
python -m medurwkv_net verify-data --config_file configs/train.json --dataset_dir <dataset_dir>
```

It prints a table (cases, errors and warnings per split), then every problem with its file. Errors of
prepare-data, verify-data and `monai.bundle run` on bad data are one message naming the file or folder
and what to do (e.g. an image without its mask, a mask whose size differs from its image);
`MEDURWKV_DEBUG=1` shows the traceback.

## Preprocessing

MONAI transforms listed in `configs/train.json`, where they can be read and overridden:

- `train#deterministic_transforms` (also validation, through the `%train#deterministic_transforms` macro):
  `LoadImaged`; `EnsureChannelFirstd`; `medurwkv_net.data.EnsureChannelsd` ({in_desc}); `medurwkv_net.data.LoadMaskd`
  (the mask file(s) of a case as one binary channel: {masks_short}); `EnsureTyped`; `ScaleIntensityRanged`
  (/255: intensities in 0..1); `Resized` to **256x256** (`spatial_size`; the mask with nearest neighbour).
- `train#random_transforms`: the {domain} augmentations, on the 0..1 image (index in the list, transform,
  probability, range):
{augment_list}
- `train#normalize_transforms` (also validation, through the `%train#normalize_transforms` macro):
  `NormalizeIntensityd` (ImageNet mean/std), after the augmentations, which need intensities in 0..1.
- Evaluation (`configs/evaluate.json`) normalises and resizes the image only (per channel the same tensor as
  resizing first) and inverts the resize of the prediction (`Invertd`), so that Dice, IoU and HD95 are computed
  against the mask as stored, at its original size. Inference does the same before writing the mask.

Why these augmentations ({domain}): {augment_why}.

`EnsureChannelsd` and `LoadMaskd` read the releases (MONAI has no transform that unites several mask files or
binarises colour/JPEG masks); {own_augment} (`medurwkv_net.data`) are augmentations MONAI lacks. Every
probability and range is a config value; override an entry from the command line, e.g.
`--train#random_transforms#{example_index}#prob 0.2` or
`--train#random_transforms#{example_index}#{example_arg} "{example_value}"`, and the whole training chain with
`--train#preprocessing#transforms`, e.g. without augmentation:
`--train#preprocessing#transforms "\\$@train#deterministic_transforms + @train#normalize_transforms"`.

## Training configuration

Paper recipe: loss Dice + cross-entropy (Dice over the batch); AdamW (lr 1e-4, weight decay 0.01) with
polynomial LR decay (power 0.9); batch 8; 100 epochs; encoder frozen for the first 5 epochs
(`EncoderFreezeHandler`), then trained; validation every epoch (mean Dice at 256x256 selects
`models/model.pt`). `--pretrained False` trains from scratch (the paper's ablation; no encoder freezing).
Training never reads the test split.

The pretrained encoder is downloaded from the Hugging Face Hub on first use; without network access and
without a cached copy, training stops before it starts with an error naming the file, the cache folder
and how to point at a local copy.

## Input/Output

- Input: `image`, {in_desc_short}, any size (resized to 256x256 for the network).
- Output: `pred`, 2 channels (0 background, 1 {cls}); masks are written at the input's size.
- Files: `models/model.pt` (state dict of the best validation epoch, what MONAI Label loads); `eval/`
  (TensorBoard logs, `curves.png`; after evaluation `*_raw.csv` per case and `*_summary.csv` for Dice, IoU and
  HD95{subset_note}, `evaluation_predictions.png`); `eval/predictions/NAME_seg.png` (inference masks, 0/255).

## Performance

{expected}

## MONAI Bundle Commands

From this folder:

```
# train (prepares the data first); writes models/model.pt, TensorBoard logs and curves to eval/
python -m monai.bundle run training --config_file configs/train.json --dataset_dir <dataset_dir>
# from scratch (paper ablation)
python -m monai.bundle run training --config_file configs/train.json --dataset_dir <dataset_dir> --pretrained False
# evaluate models/model.pt on the test split (no Hub access needed)
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir <dataset_dir>
# inference: masks (PNG, 0/255, original size) in eval/predictions/ for a folder of images
python -m monai.bundle run --config_file configs/inference.json --input_dir <folder of images>
# multi-GPU (DDP)
torchrun --nproc_per_node=2 -m monai.bundle run """
          """--config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir <dataset_dir>
# checks
python -m medurwkv_net verify-metadata configs/metadata.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json """
          """--config_file configs/inference.json
# TorchScript (scripted: accepts any input size, loads without medurwkv_net)
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt """
          """--meta_file configs/metadata.json --config_file configs/inference.json
```

Useful overrides: `--split_seed N` (seeded splits), `--spatial_size "[320,320]"`, `--max_epochs`,
`--batch_size`, `--device "\\$torch.device('cpu')"`.

This bundle ships without trained weights (`models/model.pt` is written by training); the model zoo's
checks that need weights (TorchScript export, MONAI Label inference) are run by the project's tests on
weights saved from the untrained network, as the zoo's own CI does for bundles whose weights are hosted
elsewhere.

## References

{references}

## License

Code and weights of this bundle: Apache-2.0 (see [LICENSE](../LICENSE)). The data keep their own
terms ([data_license.txt](data_license.txt)); weights trained on them may be bound by those terms.
""")


REFERENCES = [
    "Med-URWKV: Pure RWKV With ImageNet Pre-training For Medical Image Segmentation, arXiv:2506.10858",
    "Duan et al., Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures, arXiv:2403.02308",
]


def _readme(name, d):
    expected = "Not yet measured by this project on the full release. "
    if d["paper"]:
        expected += d["paper"] + "."
    else:
        expected += ("The Med-URWKV paper reports Dice and IoU for this dataset (arXiv:2506.10858); "
                     "compare with its table.")
    expected += " Evaluation writes the numbers to compare in `eval/`."
    return README.format(
        short=d["short"], task_sentence=d["task"], source=d["source"], counts=d["counts"], masks=d["masks"],
        layout=d["layout"], split=d["split"],
        layout_note=("\n" + d["layout_note"] + "\n") if d.get("layout_note") else "", name=name,
        in_channels=d["in_channels"],
        chan_note=", RGB patch embedding summed over colours for 1 channel" if d["in_channels"] == 1 else "",
        in_desc=("1 channel: colour files are averaged to grey, alpha dropped; 16-bit files scaled to 0-255"
                 if d["in_channels"] == 1
                 else "3 channels: grey-scale files are repeated, alpha dropped; 16-bit files scaled to 0-255"),
        in_desc_short=("grey-scale radiograph (1 channel)" if d["in_channels"] == 1 else "RGB (3 channels)"),
        masks_short=d.get("masks_short", "alpha dropped, foreground where any colour channel is above the threshold"),
        cls=d["cls"],
        subset_note="; `test_subsets.csv`: Test A, Test B and pooled" if name == "glas" else "",
        references="\n".join(f"- {r}" for r in REFERENCES + d["refs"]),
        expected=expected,
        **_augment_card(d),
    )


def _value(v) -> str:
    return json.dumps(v)


def _augment_card(d: dict) -> dict:
    """The card's list of ``train#random_transforms`` (index, transform, probability, arguments, why) and an
    override example, written from the entries themselves."""
    lines = []
    for i, (t, why) in enumerate(_augmentations(d)):
        args = ", ".join(f"{k} {_value(v)}" for k, v in t.items()
                         if k not in ("_target_", "keys", "prob", "mode", "padding_mode"))
        lines.append(f"  - `{i}` `{t['_target_'].split('.')[-1]}` (prob {t['prob']}; {args}): {why}")
    lines.append(f"  - `{len(lines)}` `EnsureTyped`: plain float tensors for the batches")
    own = [(i, t) for i, (t, _) in enumerate(_augmentations(d)) if t["_target_"].startswith(_OWN)]
    index, first = own[0]
    arg = next(k for k in first if k not in ("_target_", "keys", "prob"))
    names = sorted({t["_target_"].split(".")[-1] for _, t in own})
    return {"augment_list": "\n".join(lines), "domain": d["augment"], "augment_why": AUGMENTATIONS[d["augment"]][0],
            "own_augment": ", ".join(f"`{n}`" for n in names), "example_index": index, "example_arg": arg,
            "example_value": _value(first[arg]).replace(" ", "")}


_SHORT_LIST = re.compile(r'\[\s*((?:-?[0-9.]+|"[^",\[\]]{0,24}"|null|true|false)'
                         r'(?:,\s*(?:-?[0-9.]+|"[^",\[\]]{0,24}"|null|true|false))*)\s*\]')


def _json(obj) -> str:
    """indent 4, short lists of scalars on one line (as the template is written)"""
    text = json.dumps(obj, indent=4)
    text = _SHORT_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    assert json.loads(text) == obj
    return text + "\n"


def render_bundle(name: str, template: str | Path) -> dict[str, str]:
    """Relative path -> text of every file of the ``name`` bundle, from the template bundle folder."""
    template = Path(template)
    if name not in DATASETS:
        raise KeyError(f"unknown dataset bundle '{name}'; known: {', '.join(DATASETS)}")
    if not (template / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"template bundle '{template}' has no configs/train.json")
    d = DATASETS[name]
    files = {
        "configs/train.json": _json(_train_cfg(template, name, d)),
        "configs/inference.json": _json(_inference_cfg(template, name, d)),
        "configs/evaluate.json": _json(_evaluate_cfg(template, name, d)),
        "configs/metadata.json": _json(_metadata(template, name, d)),
        "docs/README.md": _readme(name, d),
        "docs/data_license.txt": f"Third-party data licence: {d['short']}\n\n{d['licence']}\n",
    }
    for rel in COPIED:
        files[rel] = (template / rel).read_text()
    return files


def _default_bundles_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "bundles"


def write_bundles(bundles_dir: str | Path | None = None, template: str = "medurwkv_mni152_tissue",
                  names=None, check: bool = False) -> list[str]:
    """Write (or with ``check=True`` only compare) the dataset bundles under ``bundles_dir`` (default: the
    repository's ``bundles/``) from the template bundle ``bundles_dir/template``. Returns the paths that
    were written, or that differ."""
    root = Path(bundles_dir) if bundles_dir is not None else _default_bundles_dir()
    changed = []
    for name in names or DATASETS:
        out = root / f"medurwkv_{name}"
        for rel, text in render_bundle(name, root / template).items():
            path = out / rel
            if path.is_file() and path.read_text() == text:
                continue
            changed.append(str(path))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return changed


if __name__ == "__main__":
    check = "--check" in sys.argv[1:]
    paths = write_bundles(check=check)
    print("\n".join(paths) if paths else "all dataset bundles are up to date")
    sys.exit(1 if check and paths else 0)
