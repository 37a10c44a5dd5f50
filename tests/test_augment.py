"""Tests of tiny_fastai.augment: the imgaug pipeline, `fast_augment` (imgaug bit for bit on whole batches), `reseed`,
train-only application, and per-worker random state."""
import shutil
import numpy as np, pytest, torch
import imgaug.augmenters as iaa
from PIL import Image
from fastai.vision.all import TensorImage, TensorCategory, PILImage
from tiny_fastai.augment import default_augmenter, ImgAugTransform, fast_augment, reseed, _fast_fn
from tiny_fastai.data import sample_path, open_image
from tiny_fastai.loaders import tiny_dls


@pytest.fixture(scope='module')
def imgs():
    fs = sorted(sample_path().glob('train/*/images/*.JPEG'))[::8][:96]
    return np.stack([np.asarray(open_image(f)) for f in fs])


def _kinds(aug):
    "Names of the leaf augmenters inside `aug`"
    return {type(a).__name__ for a in aug.get_all_children(flat=True) if not isinstance(a, (iaa.Sequential, iaa.Sometimes))}


def test_default_augmenter_has_at_least_five_kinds():
    kinds = _kinds(default_augmenter())
    assert {'Fliplr', 'Affine', 'Multiply', 'GammaContrast', 'AddToHueAndSaturation', 'Grayscale', 'GaussianBlur', 'Cutout'} <= kinds


def test_strength():
    img = np.asarray(Image.open(next((sample_path()/'val'/'images').iterdir())).convert('RGB'))
    assert (default_augmenter(0)(image=img) == img).all()
    diffs = []
    for s in (0.3, 1.5):
        aug = default_augmenter(s); aug.seed_(0)
        diffs.append(np.mean([np.abs(aug(image=img).astype(int) - img).mean() for _ in range(40)]))
    assert diffs[0] < diffs[1], diffs  # stronger means further from the original
    with pytest.raises(ValueError, match='strength'): default_augmenter(-0.5)


def test_train_only():
    "Augmentation changes training batches and leaves validation batches alone"
    plain = tiny_dls(sample_path(), bs=32, aug=None, num_workers=0)
    augd = tiny_dls(sample_path(), bs=32, num_workers=0, seed=0)
    xv0, yv0 = plain.valid.one_batch()
    xv1, yv1 = augd.valid.one_batch()
    assert torch.equal(xv0, xv1) and torch.equal(yv0, yv1)
    tr_plain = plain.train.new(shuffle=False)
    tr_aug = augd.train.new(shuffle=False)
    x0, _ = tr_plain.one_batch(); x1, _ = tr_aug.one_batch()
    assert x0.shape == x1.shape == (32, 3, 64, 64)
    per_img = (x0 - x1).abs().flatten(1).mean(1)
    assert (per_img > 1e-3).float().mean() > 0.5  # most images changed (some may draw only a no-op, e.g. no flip)


def _identical_layout(tmp_path, n=16):
    "A two-class Tiny ImageNet layout (a classifier needs two) in which every image is the same picture"
    src = next((sample_path()/'train').glob('*/images/*.JPEG'))
    root = tmp_path/'tiny-imagenet-200'
    wnids = ['n00000001', 'n00000002']
    (root/'val'/'images').mkdir(parents=True)
    (root/'wnids.txt').write_text(''.join(w + '\n' for w in wnids))
    (root/'words.txt').write_text(''.join(f'{w}\tthing {j}\n' for j,w in enumerate(wnids)))
    for i in range(n):
        w = wnids[i % 2]; (root/'train'/w/'images').mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root/'train'/w/'images'/f'{w}_{i}.JPEG')
    for j,w in enumerate(wnids): shutil.copy(src, root/'val'/'images'/f'val_{j}.JPEG')
    (root/'val'/'val_annotations.txt').write_text(''.join(f'val_{j}.JPEG\t{w}\t0\t0\t63\t63\n' for j,w in enumerate(wnids)))
    return root


def _worker_batches(path, reseed):
    "The training batches of one epoch with 2 workers; fastai hands batch i to worker i % 2"
    dls = tiny_dls(path, bs=2, num_workers=2, aug=ImgAugTransform(default_augmenter(), reseed=reseed), seed=0)
    return [xb for xb, _ in dls.train]


@pytest.mark.parametrize('reseed', [True, False])
def test_workers_get_their_own_random_state(tmp_path, reseed):
    """With reseeding, the two workers augment the same picture differently; without it (`reseed=False`, what imgaug
    does by itself), worker 1 repeats exactly the augmentations of worker 0: the bug the reseeding fixes."""
    bs = _worker_batches(_identical_layout(tmp_path), reseed)
    assert len(bs) == 8
    pairs = [(bs[i], bs[i+1]) for i in range(0, 8, 2)]  # (worker 0's batch k, worker 1's batch k)
    same = [torch.equal(a, b) for a, b in pairs]
    if reseed: assert not any(same)
    else: assert all(same)
    # within a worker, successive batches differ either way
    assert not torch.equal(bs[0], bs[2])


def test_seed_reproducible_with_workers(tmp_path):
    "seed_everything (the one seeding policy; loaders never reseed the process) makes the workers' augmentation repeat"
    from tiny_fastai.core import seed_everything
    path = _identical_layout(tmp_path)
    seed_everything(0); a = _worker_batches(path, True)
    seed_everything(0); b = _worker_batches(path, True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_item_form_follows_torch_seed():
    t = ImgAugTransform(default_augmenter())
    img = PILImage.create(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    outs = []
    for s in (1, 2, 1):
        torch.manual_seed(s); outs.append(np.array(t(img, split_idx=0)))
    assert (outs[0] == outs[2]).all() and not (outs[0] == outs[1]).all()
    assert (np.array(t(img, split_idx=1)) == np.array(img)).all()


def test_batch_form_keeps_labels_and_types():
    t = ImgAugTransform(default_augmenter())
    x = TensorImage(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
    out = t([(x, TensorCategory(1)), (x, TensorCategory(2))], split_idx=0)
    assert [int(o[1]) for o in out] == [1, 2]
    assert all(isinstance(o[0], TensorImage) and o[0].dtype == torch.uint8 and o[0].shape == (3, 64, 64) for o in out)


# ---------------------------------------------------------------- fast_augment

@pytest.mark.parametrize('strength', [0.3, 1.0, 2.0])
def test_fast_augment_is_imgaug(imgs, strength):
    "Same seed, same images as imgaug, batch after batch (so the random state advances the same way too)"
    ref,out = default_augmenter(strength),default_augmenter(strength)
    for seed in (0, 7):
        ref.seed_(seed); out.seed_(seed)
        for _ in range(3):
            r,o = ref(images=imgs.copy()),fast_augment(out, imgs.copy())
            assert o.dtype == np.uint8 and o.shape == imgs.shape
            assert np.array_equal(r, o)
    assert not np.array_equal(o, imgs)


CASES = {
    'fliplr': iaa.Fliplr(0.5),
    'affine': iaa.Affine(scale=(0.7, 1.4), translate_percent={'x': (-0.2, 0.2), 'y': (-0.2, 0.2)}, rotate=(-45, 45), shear=(-15, 15), order=1, mode='reflect'),
    'affine_px_xy': iaa.Affine(scale={'x': (0.8, 1.2), 'y': (0.9, 1.1)}, translate_px=(-5, 5), shear={'x': (-5, 5), 'y': (-5, 5)}),
    'affine_modes': iaa.Affine(rotate=(-30, 30), order=[0, 1, 3], mode=['constant', 'edge', 'symmetric', 'wrap'], cval=(0, 255)),
    'multiply': iaa.Multiply((0.5, 1.5), per_channel=0.5),
    'add': iaa.Add((-40, 40), per_channel=0.5),
    'gamma': iaa.GammaContrast((0.5, 2.0), per_channel=0.5),
    'hue_sat': iaa.AddToHueAndSaturation(value_hue=(-30, 30), value_saturation=(-60, 60)),
    'hue_sat_value': iaa.AddToHueAndSaturation((-20, 20), per_channel=True),
    'blur': iaa.GaussianBlur(sigma=(0.0, 3.0)),
    'sometimes_else': iaa.Sometimes(0.5, iaa.Fliplr(1.0), [iaa.Add(10), iaa.Multiply(0.5)]),
    'fallbacks': iaa.Sequential([iaa.Cutout(nb_iterations=(1, 3)), iaa.Grayscale((0.0, 1.0)), iaa.Dropout(0.1)], random_order=True),
}

@pytest.mark.parametrize('name', list(CASES))
def test_fast_augment_each_kind(imgs, name):
    a = CASES[name]
    for seed in (1, 2):
        a.seed_(seed); r = a(images=imgs.copy())
        a.seed_(seed); o = fast_augment(a, imgs.copy())
        assert np.array_equal(r, o), name


def test_fast_augment_edge_cases(imgs):
    assert _fast_fn(iaa.Affine(fit_output=True)) is None and _fast_fn(iaa.Cutout()) is None
    assert _fast_fn(default_augmenter()) is not None
    assert fast_augment(default_augmenter(), imgs[:0].copy()).shape == (0, 64, 64, 3)
    assert np.array_equal(fast_augment(iaa.Identity(), imgs.copy()), imgs)
    d = default_augmenter().to_deterministic()        # deterministic augmenters: imgaug itself
    assert np.array_equal(fast_augment(d, imgs.copy()), d(images=imgs.copy()))
    f = imgs[:4].astype(np.float32)                   # not uint8: imgaug itself
    a = iaa.Add(10); a.seed_(0); r = a(images=f.copy()); a.seed_(0)
    assert np.array_equal(fast_augment(a, f.copy()), r)


# ---------------------------------------------------------------- reseed, the random-state policy

def test_reseed(imgs):
    "From PyTorch's RNG (or a given seed), for an augmenter or a transform; a transform made with `reseed=False` is left alone"
    a, b = default_augmenter(), default_augmenter()
    torch.manual_seed(0); reseed(a); torch.manual_seed(0); assert reseed(b) is b
    assert np.array_equal(a(images=imgs[:8]), b(images=imgs[:8]))
    reseed(a, 3); reseed(b, 3)
    assert np.array_equal(a(images=imgs[:8]), b(images=imgs[:8]))
    off = ImgAugTransform(iaa.Add((-50, 50)), reseed=False)
    off.aug.seed_(5); ref = off.aug(images=imgs[:8])
    off.aug.seed_(5); reseed(off); reseed(off, 1)
    assert np.array_equal(off.aug(images=imgs[:8]), ref)


def test_reseed_holds_for_the_item_form(imgs):
    "After `reseed(t)` (what training does at each epoch in the main process) the item form does not reseed over it"
    t = ImgAugTransform(iaa.Add((-50, 50)))
    img = PILImage.create(imgs[0])
    torch.manual_seed(0); reseed(t); a = [np.array(t(img, split_idx=0)) for _ in range(2)]
    torch.manual_seed(0); reseed(t); b = [np.array(t(img, split_idx=0)) for _ in range(2)]
    assert all((x == y).all() for x, y in zip(a, b)) and not (a[0] == a[1]).all()
    torch.manual_seed(1); reseed(t, 7); c = np.array(t(img, split_idx=0))
    torch.manual_seed(2); reseed(t, 7); assert (np.array(t(img, split_idx=0)) == c).all()


def test_augment_batch_is_the_list_form(imgs):
    "`augment_batch` on a uint8 array gives what the list form gives, with either executor, and sets OpenCV to one thread"
    import cv2
    t = ImgAugTransform(default_augmenter())
    x = imgs[:16]
    torch.manual_seed(4)
    ref = np.stack([o[0].permute(1, 2, 0).numpy() for o in t([(TensorImage(torch.from_numpy(a).permute(2, 0, 1)), TensorCategory(0)) for a in x], split_idx=0)])
    for impl in ('fast', 'imgaug'):
        torch.manual_seed(4); assert np.array_equal(t.augment_batch(x.copy(), impl), ref), impl
    assert cv2.getNumThreads() == 1
    with pytest.raises(ValueError, match='impl'): t.augment_batch(x, 'gpu')
