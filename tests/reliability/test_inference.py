import numpy as np
import pytest
import torch

from medurwkv_net.reliability import SafeSlidingWindowInferer, sliding_window_predict, validate_image


class Recorder(torch.nn.Module):
    """Tiny per-pixel network (two learnable affine maps -> 2 classes) recording its largest input.

    Per-pixel on purpose: the 16M-pixel and 16M-voxel tests stay cheap on a loaded CPU."""

    def __init__(self, dims, in_ch=1):
        super().__init__()
        self.in_channels = in_ch
        self.w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        self.b = torch.nn.Parameter(torch.tensor([0.0, 0.5]))
        self.largest = 0

    def forward(self, x):
        self.largest = max(self.largest, x.numel())
        x = x.mean(1, keepdim=True)
        return torch.cat([x * self.w[0] + self.b[0], x * self.w[1] + self.b[1]], 1)


@pytest.mark.parametrize("shape,roi", [((1, 4096, 4096), (1024, 1024)), ((1, 256, 256, 256), (128, 128, 128))])
def test_large_inputs_run_window_by_window(shape, roi):
    net = Recorder(len(roi))
    x = torch.rand(*shape)
    out = sliding_window_predict(net, x, roi, sw_batch_size=1, overlap=0.0, mode="constant", argmax=True)
    assert out.shape == (1, 1, *shape[1:]) and out.dtype == torch.uint8
    assert net.largest == int(np.prod(roi))  # the network never saw more than one window
    # same result as the network applied directly to a crop
    crop = (slice(None),) + tuple(slice(0, 8) for _ in roi)
    with torch.no_grad():
        direct = net(x[None][(slice(None),) + crop]).argmax(1)
    assert torch.equal(out[0, 0][crop[1:]], direct[0].to(torch.uint8))


def test_nan_input_raises_value_error_naming_location():
    net = Recorder(2)
    x = torch.rand(1, 64, 64)
    x[0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN and 0 Inf values \(first at index \(0, 0, 5, 7\)"):
        sliding_window_predict(net, x, (32, 32))
    x[0, 5, 7] = float("inf")
    with pytest.raises(ValueError, match="0 NaN and 1 Inf"):
        sliding_window_predict(net, x, (32, 32))


def test_wrong_channel_count_and_rank_raise():
    net = Recorder(2, in_ch=1)
    with pytest.raises(ValueError, match=r"3 channel\(s\) \(shape \(1, 3, 64, 64\)\), the network expects 1"):
        sliding_window_predict(net, torch.rand(3, 64, 64), (32, 32))
    with pytest.raises(ValueError, match=r"expected \[C, 2 spatial dims\]"):
        sliding_window_predict(net, torch.rand(64, 64), (32, 32))
    with pytest.raises(ValueError, match="network expects 3"):
        sliding_window_predict(net, torch.rand(1, 64, 64), (32, 32), in_channels=3)


def test_constant_image_gives_valid_mask():
    torch.manual_seed(0)
    # instance norm sees zero variance on a constant window: must still give finite logits
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.InstanceNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 3, 1))
    for value in (0.0, 1.0, 1e4):
        out = sliding_window_predict(net, np.full((1, 80, 72), value, np.float32), (64, 64), argmax=True)
        assert out.shape == (1, 1, 80, 72)
        assert int(out.max()) < 3 and int(out.min()) >= 0
    assert net.training  # mode restored


def test_non_finite_network_output_is_refused():
    class Divide(torch.nn.Module):  # normalises by the window std: 0/0 on a constant window
        def forward(self, x):
            return torch.cat([(x - x.mean()) / x.std(), -x], 1)

    inferer = SafeSlidingWindowInferer(roi_size=(16, 16), in_channels=1)
    with pytest.raises(RuntimeError, match="NaN/Inf outputs.*no mask was produced"):
        inferer(torch.ones(1, 1, 32, 32), Divide())


def test_validate_image_converts_ints_and_numpy():
    t = validate_image(np.ones((2, 4, 4), np.uint8), spatial_dims=2, in_channels=2)
    assert t.dtype == torch.float32 and t.shape == (1, 2, 4, 4)
    with pytest.raises(TypeError, match="list"):
        validate_image([[1.0]], spatial_dims=2)


def test_chunked_argmax_matches_argmax():
    from medurwkv_net.reliability.inference import _chunked_argmax

    logits = torch.randn(2, 5, 37, 11, 3)
    labels = _chunked_argmax(logits)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 1, 37, 11, 3)
    assert torch.equal(labels.long(), logits.argmax(1, keepdim=True))


def test_slice_inferer_runs_a_2d_network_over_the_slices_of_a_volume():
    from medurwkv_net.reliability import SafeSliceInferer

    net = Recorder(2)
    volume = torch.rand(1, 1, 40, 36, 7)
    out = SafeSliceInferer([32, 32], spatial_dim=2, sw_batch_size=3, overlap=0.25)(volume, net)
    assert out.shape == (1, 2, 40, 36, 7)
    torch.testing.assert_close(out[:, 0], volume[:, 0] * 1.0, atol=1e-5, rtol=0)  # per-pixel map, stitched back
    assert net.largest <= 3 * 32 * 32  # never more than sw_batch_size slices (windows) at once
    with pytest.raises(ValueError, match=r"contains 1 NaN"):
        volume[0, 0, 3, 3, 3] = float("nan")
        SafeSliceInferer([32, 32])(volume, net)
    with pytest.raises(ValueError, match=r"expected \[C, 3 spatial dims\]"):
        SafeSliceInferer([32, 32])(torch.rand(1, 1, 1, 40, 36, 7), net)  # not a volume
