"""Validation labels without foreground for a class: a warning naming the class and the cases, before training
and during validation (instead of a silent 0.0000 / NaN metric)."""
import json
import logging

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine

from medurwkv_net.bundle import ClassMetricReport, eval_transforms, make_inferer, postprocessing
from medurwkv_net.reliability import verify_datalist_file


def _cases(folder, n, labels, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = np.random.default_rng(seed + i).random((12, 12)).astype(np.float32)
        lab = np.zeros((12, 12), np.uint8)
        for k, value in enumerate(labels):
            lab[k * 3:(k + 1) * 3] = value
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), folder / f"c{i}_seg.nii.gz")
        out.append({"image": str(folder / f"c{i}.nii.gz"), "label": str(folder / f"c{i}_seg.nii.gz")})
    return out


def test_a_class_missing_from_every_validation_label_is_named_before_training(tmp_path, caplog):
    train = _cases(tmp_path / "tr", 2, [1, 2])
    val = _cases(tmp_path / "va", 3, [1], seed=10)  # grey matter only, no white matter anywhere
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": train, "validation": val}))
    with caplog.at_level(logging.WARNING):
        verify_datalist_file(path, tmp_path, num_classes=3, spatial_dims=2,
                             class_names=["background", "grey_matter", "white_matter"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the validation labels hold no class 2 ('white_matter') in any of their 3 case(s) "
                                  f"(validation[0] {val[0]['label']}, validation[1] {val[1]['label']}"), warnings[0]
    assert "its Dice is undefined (NaN) every epoch" in warnings[0]


def test_all_background_validation_labels_warn_during_validation(tmp_path, caplog):
    cases = _cases(tmp_path / "va", 2, [0])
    pre = eval_transforms(1, [12, 12])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(cases, pre), batch_size=1),
        network=torch.nn.Conv2d(1, 2, 3, padding=1), inferer=make_inferer([12, 12]),
        postprocessing=postprocessing(2, with_label=True),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                  output_transform=from_engine(["pred", "label"]))},
        val_handlers=[ClassMetricReport("val_mean_dice", ["lesion"])],
    )
    with caplog.at_level(logging.WARNING):
        evaluator.run()
        evaluator.run()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "foreground" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every epoch
    assert warnings[0].startswith("val_mean_dice: no case of this evaluation (2 case(s)) has foreground of 'lesion': "
                                  "its value is undefined (NaN); no class can be rated: val_mean_dice reads 0.0 and "
                                  "cannot select a best model"), warnings[0]
