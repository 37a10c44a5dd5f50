"""The private APIs of fastai, PyTorch and imgaug (the `imaug` distribution) that tiny_fastai relies on, each checked on
its own: when an upgrade removes or renames one, its test fails naming the hook and the module of tiny_fastai that uses
it, not a traceback deep inside a training run. pyproject.toml bounds these dependencies below their next release
line; before raising a bound, run this file against the new version."""
import importlib, inspect
import pytest, numpy as np
import fastai, torch, imgaug

def _msg(hook, user, pkg, why=''):
    return (f"{user} uses {hook}{f' ({why})' if why else ''}, which {pkg.__name__} {pkg.__version__} no longer has: "
            f"adapt {user} to this version, or keep the bound on {pkg.__name__} in pyproject.toml")

# ------------------------------------------------------------------ fastai
def test_fastai_loaders():
    from fastai.data import load
    assert hasattr(load, '_loaders') and len(load._loaders) == 2, _msg('fastai.data.load._loaders', 'tiny_fastai.loaders',
        fastai, "FastDL.__iter__ picks fastai's single- or multi-process iterator class from it")

def test_fastai_dataloader_idxs():
    from fastai.data.load import DataLoader
    assert '__idxs' in inspect.getsource(DataLoader.sample), _msg('the name-mangled DataLoader._DataLoader__idxs',
        'tiny_fastai.loaders', fastai, "FastDL sets it to what DataLoader.sample reads")
    dl = DataLoader(list(range(8)), bs=4, num_workers=0)
    assert hasattr(dl, 'fake_l') and dl.fake_l.num_workers == 0 and hasattr(dl.fake_l, 'persistent_workers'), _msg(
        'DataLoader.fake_l (num_workers, persistent_workers)', 'tiny_fastai.loaders and tiny_fastai.checkpoint', fastai,
        "FastDL hands it to torch's _MultiProcessingDataLoaderIter")

def test_fastai_constant_func():
    import fastai.learner
    assert hasattr(fastai.learner, '_ConstantFunc') and fastai.learner._ConstantFunc([3, 1])() == [3, 1], _msg(
        'fastai.learner._ConstantFunc', 'tiny_fastai.distrib', fastai, "get_preds_all gives each rank its own indices with it")

def test_fastai_do_fit():
    from fastai.learner import Learner
    assert callable(getattr(Learner, '_do_fit', None)) and hasattr(Learner._do_fit, '__code__'), _msg(
        'fastai.learner.Learner._do_fit', 'tiny_fastai.checkpoint', fastai, "a signal handler tells from its frame whether a fit is running")

def test_fastai_skip_to_epoch():
    from fastai.learner import SkipToEpoch
    assert getattr(SkipToEpoch(3), '_skip_to', None) == 3, _msg('fastai.learner.SkipToEpoch._skip_to', 'tiny_fastai.checkpoint',
        fastai, "Checkpoint knows from it which epochs a resume skips")

# ------------------------------------------------------------------ PyTorch
def test_torch_multiprocessing_iter():
    from torch.utils.data import dataloader
    it = getattr(dataloader, '_MultiProcessingDataLoaderIter', None)
    assert it is not None and all(callable(getattr(it, m, None)) for m in ('_reset', '_shutdown_workers')), _msg(
        'torch.utils.data.dataloader._MultiProcessingDataLoaderIter (._reset, ._shutdown_workers)', 'tiny_fastai.loaders',
        torch, "FastDL keeps its loader workers between passes")
    src = inspect.getsource(it.__init__) + inspect.getsource(dataloader._BaseDataLoaderIter.__init__)
    assert 'self._dataset' in src and 'self._collate_fn' in src, _msg(
        '_MultiProcessingDataLoaderIter._dataset and ._collate_fn', 'tiny_fastai.loaders', torch,
        "FastDL drops them so that kept workers do not hold the loader")

def test_torch_dynamo_config():
    import torch._dynamo
    cfg = torch._dynamo.config
    assert hasattr(cfg, 'recompile_limit') or hasattr(cfg, 'cache_size_limit'), _msg(
        'torch._dynamo.config.recompile_limit (or cache_size_limit)', 'tiny_fastai.learner', torch,
        "compile_model raises it: one graph per stage size and mode")

def test_torch_compiled_call_impl():
    m = torch.nn.Linear(2, 2)
    assert hasattr(m, '_compiled_call_impl'), _msg('torch.nn.Module._compiled_call_impl', 'tiny_fastai.infer', torch,
        "export_learner unsets it: a compiled forward cannot be pickled")

def test_torch_foreach_lerp():
    a,b = [torch.zeros(3)],[torch.ones(3)]
    assert hasattr(torch, '_foreach_lerp_'), _msg('torch._foreach_lerp_', 'tiny_fastai.callbacks', torch, "EMA updates the average with it")
    torch._foreach_lerp_(a, b, 0.25)
    assert torch.allclose(a[0], torch.full((3,), 0.25)), _msg('torch._foreach_lerp_ (a + w*(b - a), in place)', 'tiny_fastai.callbacks', torch)

@pytest.mark.parametrize('mod,name,user', [('torch.nn.modules.batchnorm', '_BatchNorm', 'tiny_fastai.distrib'),
                                           ('torch.nn.modules.conv', '_ConvNd', 'tiny_fastai.models'),
                                           ('torch.nn.modules.dropout', '_DropoutNd', 'tiny_fastai.models')])
def test_torch_module_bases(mod, name, user):
    cls = getattr(importlib.import_module(mod), name, None)
    assert isinstance(cls, type) and issubclass(cls, torch.nn.Module), _msg(f'{mod}.{name}', user, torch, 'isinstance checks on layers')

# ------------------------------------------------------------------ imgaug (the imaug distribution)
def test_imgaug_affine():
    import imgaug.augmenters as iaa
    from imgaug.augmenters import geometric as _geo
    assert isinstance(getattr(_geo, '_AFFINE_MODE_SKIMAGE_TO_CV2', None), dict) and 'constant' in _geo._AFFINE_MODE_SKIMAGE_TO_CV2, _msg(
        'imgaug.augmenters.geometric._AFFINE_MODE_SKIMAGE_TO_CV2', 'tiny_fastai.augment', imgaug, "the fast Affine's border modes")
    aug = iaa.Affine(rotate=(-10, 10))
    assert callable(getattr(aug, '_draw_samples', None)), _msg('imgaug Affine._draw_samples', 'tiny_fastai.augment', imgaug)
    s = aug._draw_samples(2, imgaug.random.RNG(0))
    p = s.get_affine_parameters(0, arr_shape=(8, 8), image_shape=(8, 8))
    keys = {'rotate_rad', 'scale_x', 'scale_y', 'shear_x_rad', 'shear_y_rad', 'translate_x_px', 'translate_y_px'}
    assert keys <= set(p) and all(hasattr(s, k) for k in ('rotate', 'order', 'mode', 'cval')), _msg(
        "imgaug's _AffineSamplingResult (get_affine_parameters, rotate, order, mode, cval)", 'tiny_fastai.augment', imgaug)

def test_imgaug_hue_saturation():
    import imgaug.augmenters as iaa
    aug = iaa.AddToHueAndSaturation((-10, 10))
    assert callable(getattr(aug, '_draw_samples', None)), _msg('imgaug AddToHueAndSaturation._draw_samples', 'tiny_fastai.augment', imgaug)
    hues,sats = aug._draw_samples(np.zeros((2, 4, 4, 3), np.uint8), imgaug.random.RNG(0))
    assert len(hues) == len(sats) == 2
    lut = getattr(iaa.AddToHueAndSaturation, '_LUT_CACHE', None)
    assert lut is not None and len(lut) == 2 and all(t.shape[0] >= 511 and t.shape[1] == 256 for t in lut), _msg(
        'imgaug AddToHueAndSaturation._LUT_CACHE (hue and saturation tables indexed by 255 + value, 0..510)', 'tiny_fastai.augment', imgaug)

def test_imgaug_blur_and_contrast():
    import imgaug.augmenters as iaa
    from imgaug.augmenters import blur as _blur, contrast as _con
    assert callable(getattr(_blur, '_compute_gaussian_blur_ksize', None)) and _blur._compute_gaussian_blur_ksize(1.0) % 2 == 1, _msg(
        'imgaug.augmenters.blur._compute_gaussian_blur_ksize', 'tiny_fastai.augment', imgaug, "the fast GaussianBlur's kernel size")
    g = iaa.GammaContrast((0.8, 1.2))
    assert isinstance(g, getattr(_con, '_ContrastFuncWrapper', ())) and g.func is _con.adjust_contrast_gamma and len(g.params1d) == 1, _msg(
        'imgaug.augmenters.contrast._ContrastFuncWrapper (func, params1d) and adjust_contrast_gamma', 'tiny_fastai.augment', imgaug,
        'how the fast path recognises GammaContrast')
