"""ResumableCheckpoint and VerifyDataHandler as MONAI bundle ``train#handlers`` entries (ConfigParser,
SupervisedTrainer/SupervisedEvaluator/ValidationHandler), the way the bundles use them."""
import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from medurwkv_net.reliability import DataVerificationError, find_checkpoints, load_checkpoint_file


def _data(tmp_path, n, bad_value=None):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = (rng.random((16, 16)) * 255).astype(np.uint8)
        lab = (img > 128).astype(np.uint8)
        if bad_value is not None and i == n - 1:
            lab[0, 0] = bad_value
        Image.fromarray(img).save(tmp_path / f"c{i}.png")
        Image.fromarray(lab).save(tmp_path / f"c{i}_m.png")
        items.append({"image": str(tmp_path / f"c{i}.png"), "label": str(tmp_path / f"c{i}_m.png")})
    return items


def _config(tmp_path, datalist, resume, max_epochs):
    xform = {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"], "channel_dim": "no_channel"},
        {"_target_": "ScaleIntensityd", "keys": "image"},
    ]}
    post = {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
    ]}
    return {
        "imports": ["$import torch"],
        "device": "$torch.device('cpu')",
        "ckpt_dir": str(tmp_path / "models"),
        "resume": resume,
        "network": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                    "padding": 1},
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.05},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer",
                         "step_size": 1, "gamma": 0.5},
        "validate": {
            "dataset": {"_target_": "Dataset", "data": datalist[:2], "transform": xform},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 2},
            "evaluator": {
                "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                "network": "@network", "postprocessing": post,
                "key_val_metric": {"val_mean_dice": {
                    "_target_": "MeanDice", "include_background": False,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
            },
        },
        "train": {
            "dataset": {"_target_": "Dataset", "data": datalist, "transform": xform},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2, "shuffle": True},
            "handlers": [
                {"_target_": "medurwkv_net.reliability.VerifyDataHandler", "datalist": "@train#dataset#data",
                 "num_classes": 2},
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": 1},
                {"_target_": "medurwkv_net.reliability.ResumableCheckpoint", "save_dir": "@ckpt_dir",
                 "objects": {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"},
                 "resume": "@resume", "metric_name": "val_mean_dice", "metric_engine": "@validate#evaluator"},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer", "max_epochs": max_epochs, "device": "@device",
                "train_data_loader": "@train#dataloader", "network": "@network", "optimizer": "@optimizer",
                "loss_function": "@loss", "train_handlers": "@train#handlers",
            },
        },
    }


def _run(config):
    parser = ConfigParser(config)
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    trainer.run()
    return trainer, evaluator, parser


def test_bundle_handlers_resume_and_restore_best_metric(tmp_path):
    data = _data(tmp_path, 4)
    trainer, evaluator, _ = _run(_config(tmp_path, data, False, 2))
    assert trainer.state.epoch == 2
    first = load_checkpoint_file(tmp_path / "models" / "checkpoint_4.pt")
    assert [h["epoch"] for h in first["progress"]["history"]] == [1, 2]
    assert first["progress"]["best_metric"] == pytest.approx(evaluator.state.best_metric)

    trainer, evaluator, parser = _run(_config(tmp_path, data, True, 4))
    assert trainer.state.epoch == 4 and trainer.state.iteration == 8
    last = load_checkpoint_file(find_checkpoints(tmp_path / "models")[0])
    hist = last["progress"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[:2] == first["progress"]["history"]
    dice = [h["metrics"]["val_mean_dice"] for h in hist]
    assert last["progress"]["best_metric"] == pytest.approx(max(dice))
    # MONAI's evaluator state continues from the restored best (not reset by the resume)
    assert evaluator.state.best_metric == pytest.approx(max(dice))
    assert last["lr_scheduler"]["last_epoch"] == 4
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**4)


def test_bundle_refuses_bad_data_before_training(tmp_path):
    data = _data(tmp_path, 3, bad_value=7)
    with pytest.raises(DataVerificationError, match=r"case\[2\](.|\n)*label values \[7\] outside range\(2\)"):
        _run(_config(tmp_path, data, False, 1))
    assert find_checkpoints(tmp_path / "models") == []
