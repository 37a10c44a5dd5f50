"""tiny_fastai.cam: the class maps read from SepXResNet's head are exact (the mean of each class's map is its logit, in
every arch), come from one forward pass in eval mode, have the documented shapes and classes; models whose logits are not
the mean of a map are refused; the pictures (show_cams, plot_top_losses_cam, cam_overlay) and top_losses.png carry
the maps."""
import json, pytest, torch
import torch.nn as nn
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from PIL import Image
from fastai.layers import Flatten
from fastai.learner import Learner
from tiny_fastai.models import ARCHS, get_arch, sep_xresnet_tiny
from tiny_fastai.cam import CamError, cam_head, head_maps, class_maps, pick_maps, cam_overlay, plot_top_losses_cam
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.learner import tiny_learner
from tiny_fastai.evaluate import evaluate
import tiny_fastai.evaluate as evaluate_mod

@pytest.mark.parametrize('arch', list(ARCHS))
def test_mean_of_map_is_logit(arch):
    "For every arch, the maps have one channel per class at input/stride and their spatial mean is the model's output"
    torch.manual_seed(0)
    net = get_arch(arch)(n_out=7).eval()
    x = torch.randn(2, 3, 64, 64)
    maps, logits = head_maps(net, x)
    stride = 8 if arch.startswith(('dense', 'sep_fused', 'tiny')) else 16   # the dense stem keeps 64 px; tiny's last stages keep the size
    assert maps.shape == (2, 7, 64//stride, 64//stride) and logits.shape == (2, 7)
    with torch.no_grad(): out = net(x)
    assert torch.allclose(logits, out, atol=1e-5)                          # the same forward pass as a prediction
    assert torch.allclose(maps.mean((2, 3)), out, atol=1e-5, rtol=1e-5)     # exact: no approximation

def test_class_maps_shapes_and_classes():
    "Top-k classes sorted by probability (the softmax of the logits), their maps at the input's size or `size`, or the classes asked for"
    torch.manual_seed(0)
    net = sep_xresnet_tiny(n_out=10, strides=(1, 2, 2, 2)).eval()
    x = torch.randn(3, 3, 32, 32)
    cm = class_maps(net, x, k=4)
    probs = torch.softmax(net(x).detach(), 1)
    assert cm.idxs.shape == (3, 4) and cm.probs.shape == (3, 4) and cm.maps.shape == (3, 4, 32, 32) and cm.map_size == (2, 2)
    assert torch.equal(cm.idxs, probs.topk(4, 1)[1]) and torch.allclose(cm.probs, probs.topk(4, 1)[0], atol=1e-6)
    assert cm.classes is None   # a bare network has no vocab
    cm = class_maps(net, x, idxs=[[1, 2], [3, 4], [5, 6]], size=(64, 64))
    assert cm.maps.shape == (3, 2, 64, 64) and cm.idxs.tolist() == [[1, 2], [3, 4], [5, 6]]
    maps, _ = head_maps(net, x)
    assert torch.equal(pick_maps(maps, cm.idxs), maps[[[0], [1], [2]], cm.idxs])   # the map of class idxs[i, j] of image i
    # a bilinear upsampling of the map: the corners of the picture are the corner cells of the map
    assert torch.allclose(cm.maps[:, :, 0, 0], pick_maps(maps, cm.idxs)[:, :, 0, 0], atol=1e-5)

def test_eval_mode_and_vocab():
    "class_maps runs in eval mode and puts the training mode back; with a `.vocab` (a TinyModel) the classes are named"
    net = sep_xresnet_tiny(n_out=3).train()
    class M: pass
    m = M(); m.model, m.vocab = net, ['cat', 'dog', 'owl']
    x = torch.randn(2, 3, 64, 64)
    a, b = class_maps(m, x, k=3), class_maps(m, x, k=3)
    assert net.training and torch.equal(a.probs, b.probs)   # BatchNorm used its running statistics, and did not change them
    assert all(sorted(c) == ['cat', 'dog', 'owl'] for c in a.classes)

def test_refuses_a_head_that_is_not_a_map():
    "A linear layer after the pool (or no pool at the end) is refused in one line: its logits are not the mean of a map"
    for net in (nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(8, 10)),
                nn.Sequential(nn.Conv2d(3, 8, 3), Flatten()), nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten())):
        with pytest.raises(CamError, match='its logits are not the mean of a map'): cam_head(net)
    assert isinstance(cam_head(sep_xresnet_tiny(n_out=3)), nn.Module)

def test_cam_overlay():
    "The picture is the image at `size` px (long side) with the map over it; a caption adds a strip under it; a flat map is fine"
    img = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)
    cam = torch.tensor([[0., 1.], [2., 3.]])
    a = cam_overlay(img, cam, size=128)
    assert a.size == (96, 128) and a.mode == 'RGB'
    b = cam_overlay(img, cam, size=128, caption='tabby (61.0%)')
    assert b.width == 96 and b.height > 128
    assert cam_overlay(Image.new('RGB', (64, 64)), torch.zeros(1, 1), size=64).size == (64, 64)
    top, bottom = [sum(a.getpixel((48, y))) for y in (2, 125)]
    assert bottom != top   # the map varies from top to bottom

def test_flat_map_gives_a_flat_tint():
    "A 1x1 map (a stride-32 net at 32 px), upsampled twice, is not drawn (it says nothing about where): float rounding is not drawn as noise"
    torch.manual_seed(0)
    cm = class_maps(sep_xresnet_tiny(n_out=5, strides=(2, 2, 2, 2)), torch.randn(2, 3, 32, 32), k=1, size=(64, 64))
    assert cm.map_size == (1, 1)
    for m in cm.maps[:, 0]:
        im = cam_overlay(Image.new('RGB', (64, 64), 'white'), m, size=256)
        assert im.getcolors() == [(256*256, (255, 255, 255))]

@pytest.fixture(scope='module')
def learn(tmp_path_factory):
    d = tmp_path_factory.mktemp('cam')
    data = make_subset(sample_path(), d/'tiny', n_classes=4, n_train=10, n_val=6)
    return tiny_learner(tiny_dls(data, size=64, bs=8, num_workers=0), path=d/'run')   # tiny at 64 px: 2x2 maps

def test_show_cams_and_top_losses(learn, monkeypatch, tmp_path):
    "show_cams: image and map per image; top_losses.png: image and the maps of the predicted and the actual class, titled so"
    fig = learn.show_cams(max_n=4, ncols=2)
    assert len([ax for ax in fig.axes if ax.images]) == 8
    assert sum(len(ax.images) == 2 for ax in fig.axes) == 4   # an image with a map over it
    plt.close('all')
    ev = evaluate(learn, tta=None, with_preds=True)
    calls = []
    def spy(interp, k, **kw):
        fig = plot_top_losses_cam(interp, k, **kw); calls.append(fig)
        return fig
    monkeypatch.setattr(evaluate_mod, 'plot_top_losses_cam', spy)
    evaluate_mod.write_interpretation(learn, ev, tmp_path, n_top=5)
    fig, = calls
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 15 and sum(t.startswith('predicted: ') for t in titles) == 5 and sum(t.startswith('actual: ') for t in titles) == 5
    assert sum(len(ax.images) == 2 for ax in fig.axes) == 10   # two maps per image
    assert 0 < (tmp_path/'top_losses.png').stat().st_size < 300_000 and not plt.get_fignums()


def test_demo_network_has_maps_at_its_last_size():
    "The demo's `tiny` at 32 px (the demo's last size) has class maps of at least 4x4 that are not flat (main's were 1x1)"
    from tiny_fastai.plan import RECIPES
    from tiny_fastai.runtime import is_flat
    torch.manual_seed(0)
    arch = RECIPES['demo'].arch
    net = get_arch(arch)(n_out=10).eval()
    cm = class_maps(net, torch.randn(2, 3, 32, 32), k=1)
    assert min(cm.map_size) >= 4 and not any(is_flat(m[0]) for m in cm.maps), (arch, cm.map_size)
