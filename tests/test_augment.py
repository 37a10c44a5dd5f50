"Tests of tiny_fastai.augment: the imgaug pipeline, train-only application, and per-worker random state."
import shutil
import numpy as np, pytest, torch
import imgaug.augmenters as iaa
from PIL import Image
from fastai.vision.all import TensorImage, TensorCategory, PILImage
from tiny_fastai.augment import default_augmenter, ImgAugTransform
from tiny_fastai.data import tiny_dls, sample_path


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
    "A one-class Tiny ImageNet layout in which every training image is the same picture"
    src = next((sample_path()/'train').glob('*/images/*.JPEG'))
    root = tmp_path/'tiny-imagenet-200'
    (root/'train'/'n00000001'/'images').mkdir(parents=True); (root/'val'/'images').mkdir(parents=True)
    (root/'wnids.txt').write_text('n00000001\n'); (root/'words.txt').write_text('n00000001\tthing, object\n')
    for i in range(n): shutil.copy(src, root/'train'/'n00000001'/'images'/f'n00000001_{i}.JPEG')
    shutil.copy(src, root/'val'/'images'/'val_0.JPEG')
    (root/'val'/'val_annotations.txt').write_text('val_0.JPEG\tn00000001\t0\t0\t63\t63\n')
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
    path = _identical_layout(tmp_path)
    a, b = _worker_batches(path, True), _worker_batches(path, True)
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
