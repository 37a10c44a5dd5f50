"""Tests of tiny_fastai.fast: `fast_augment` is imgaug bit for bit, the array cache (build, reuse, rebuild on change,
bad images), `fast_dls` gives the same items, labels and pixels as the DataBlock path, per-worker random states, fastai
integration (resize, show_batch, test_dl, training, TTA, export and predict), `find_max_bs`, and a CPU run of
bench/gpu.py. The full-dataset test runs when TINY_IMAGENET names the archive or an extracted folder."""
import json, os, pickle, shutil, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch
import imgaug.augmenters as iaa
import matplotlib; matplotlib.use('Agg')
from PIL import Image
from fastai.vision.all import TensorImage, TensorCategory, Learner, CrossEntropyLossFlat, load_learner, set_seed, first
from tiny_fastai.augment import default_augmenter, ImgAugTransform
from tiny_fastai.data import tiny_dls, resize_dls, sample_path, make_subset, get_tiny_imagenet, open_image, LayoutError, _scan
from tiny_fastai.fast import fast_augment, _fast_fn, build_cache, ArrayCache, FastDL, fast_dls, find_max_bs, _largest, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sample_path()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "PyTorch with one thread: on a busy 2-core machine more threads spin and run 10x slower"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def imgs():
    fs = sorted(SAMPLE.glob('train/*/images/*.JPEG'))[::8][:96]
    return np.stack([np.asarray(open_image(f)) for f in fs])


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory): return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def sample_dls(cache_dir):
    "Fast and DataBlock loaders on the bundled sample, same settings"
    return (fast_dls(SAMPLE, bs=32, num_workers=0, seed=0, cache_dir=cache_dir, verbose=False),
            tiny_dls(SAMPLE, bs=32, num_workers=0, seed=0))


@pytest.fixture
def subset(tmp_path): return make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=20, n_val=10)


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


# ---------------------------------------------------------------- the array cache

def _split(path, split='valid'):
    info = _scan(path)
    rows = info['train' if split == 'train' else 'valid']
    return info['path'], [f for f,_ in rows], [info['wnids'].index(w) for _,w in rows]


def test_cache_build_reuse_rebuild(subset, tmp_path, capsys):
    root,files,labels = _split(subset)
    cdir = tmp_path/'c'
    c = build_cache(root, 'valid', files, labels, cdir)
    assert 'decoding 30 valid images' in capsys.readouterr().out
    assert c.x.shape == (30, 64, 64, 3) and c.x.dtype == np.uint8 and c.y.tolist() == labels
    assert all(np.array_equal(c.x[i], np.asarray(open_image(f))) for i,f in enumerate(files))
    # reused: nothing decoded
    c2 = build_cache(root, 'valid', files, labels, cdir)
    assert c2.xf == c.xf and 'decoding' not in capsys.readouterr().out
    # a file replaced by another image: rebuilt, with the new pixels; the stale files are gone
    shutil.copy(files[1], files[0])
    c3 = build_cache(root, 'valid', files, labels, cdir)
    assert 'decoding' in capsys.readouterr().out and c3.xf != c.xf
    assert np.array_equal(c3.x[0], c3.x[1]) and not c.xf.exists()
    # a file removed, or a label changed: rebuilt
    c4 = build_cache(root, 'valid', files[1:], labels[1:], cdir)
    assert len(c4) == 29 and c4.xf != c3.xf
    c5 = build_cache(root, 'valid', files[1:], [2-l for l in labels[1:]], cdir)
    assert c5.xf != c4.xf and c5.y.tolist() == [2-l for l in labels[1:]]
    assert sorted(p.name for p in cdir.glob('*.npy')) == sorted([c5.xf.name, c5.yf.name])
    assert not list(cdir.glob('.*.tmp'))
    # a broken cache file is rebuilt
    c5.xf.write_bytes(b'garbage')
    c6 = build_cache(root, 'valid', files[1:], [2-l for l in labels[1:]], cdir)
    assert c6.x.shape == (29, 64, 64, 3)
    # pickles as its file names
    s = pickle.dumps(c6)
    assert len(s) < 1000 and np.array_equal(pickle.loads(s).x, c6.x)


def test_cache_parallel_build(tmp_path):
    "Several processes (1,000 images: 4 chunks) give the same array as one"
    root,files,labels = _split(SAMPLE, 'train')
    a = build_cache(root, 'train', files, labels, tmp_path/'a', n_workers=2, verbose=False)
    b = build_cache(root, 'train', files, labels, tmp_path/'b', n_workers=1, verbose=False)
    assert a.x.shape == (1000, 64, 64, 3) and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


def test_cache_bad_image(subset, tmp_path):
    bad = sorted((subset/'train').glob('*/images/*.JPEG'))[3]
    bad.write_bytes(b'not a jpeg')
    with pytest.raises(LayoutError, match=f'cannot decode image .*{bad.name}'):
        fast_dls(subset, num_workers=0, cache_dir=tmp_path/'c', verbose=False)
    assert not [p for p in (tmp_path/'c').iterdir() if p.suffix in ('.npy', '.tmp')]   # nothing half-written is left
    with pytest.warns(UserWarning, match='skipped 1 undecodable'):
        dls = fast_dls(subset, num_workers=0, cache_dir=tmp_path/'c', skip_bad=True, verbose=False)
    assert len(dls.train_ds) == 59 and len(dls.train_ds.cache) == 59 and bad not in dls.train_ds.items
    assert dls.bad_files == [bad]


def test_default_cache_dir(tmp_path):
    assert default_cache_dir(tmp_path) == tmp_path.resolve()/'.cache'
    d = default_cache_dir(SAMPLE)   # never inside the installed package
    assert SAMPLE.resolve() not in d.parents and 'tiny_fastai' in str(d)


# ---------------------------------------------------------------- the loaders

def test_same_items_labels_and_pixels(sample_dls):
    f,d = sample_dls
    assert type(f.train) is FastDL and type(f.valid) is FastDL
    assert f.train.cache is not None and f.valid.cache is not None
    assert list(f.vocab) == list(d.vocab) and f.c == d.c == 10
    assert list(f.train_ds.items) == list(d.train_ds.items) and list(f.valid_ds.items) == list(d.valid_ds.items)
    for a,b in zip(f.valid, d.valid):   # the whole val set, in order
        assert type(a[0]) is TensorImage and type(a[1]) is TensorCategory
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    tf = f.train.new(shuffle=False, before_batch=[])   # training set without augmentation
    td = d.train.new(shuffle=False, before_batch=[])
    for i,(a,b) in enumerate(zip(tf, td)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        if i == 4: break


def test_same_augmentation_as_datablock(sample_dls):
    "Seeded alike, both paths give the same first augmented training batch"
    bs = []
    for dls in sample_dls:
        torch.manual_seed(3)
        bs.append(first(dls.train.new(shuffle=False)))
    assert torch.equal(bs[0][0], bs[1][0]) and torch.equal(bs[0][1], bs[1][1])
    raw = first(sample_dls[0].train.new(shuffle=False, before_batch=[]))[0]
    assert (raw != bs[0][0]).float().mean() > 0.3


def test_tiny_dls_fast_forwards(cache_dir):
    dls = tiny_dls(SAMPLE, bs=16, fast=True, num_workers=0, cache_dir=cache_dir, verbose=False, aug=0.5)
    assert type(dls.train) is FastDL and dls.train.cache is not None and dls.cache_dir == cache_dir
    assert isinstance(dls.train.before_batch.fs[0], ImgAugTransform)
    assert dls.train.one_batch()[0].shape == (16, 3, 64, 64)
    with pytest.raises(ValueError, match='bs'): fast_dls(SAMPLE, bs=0)
    with pytest.raises(ValueError, match='aug_impl'): fast_dls(SAMPLE, aug_impl='gpu', cache_dir=cache_dir)


def test_imgaug_executor_gives_the_same_batches(cache_dir):
    dls = [fast_dls(SAMPLE, bs=32, num_workers=0, seed=0, cache_dir=cache_dir, verbose=False, aug_impl=i) for i in ('fast', 'imgaug')]
    assert dls[1].train.new().aug_impl == 'imgaug'
    bs = []
    for d in dls:
        torch.manual_seed(5); bs.append([x for x,_ in d.train.new(shuffle=False)][:3])
    assert all(torch.equal(a, b) for a,b in zip(*bs))


def test_odd_images_in_the_val_set(subset, tmp_path):
    "Greyscale, CMYK, PNG and odd-sized val images: the cache holds what the DataBlock path makes of them"
    fs = sorted((subset/'val'/'images').iterdir())[:4]
    im = Image.open(fs[0]).convert('RGB')
    im.convert('L').save(fs[0]); im.convert('CMYK').save(fs[1], format='JPEG'); im.resize((80, 50)).save(fs[2], format='JPEG')
    im.resize((40, 40)).save(fs[3], format='JPEG')
    f = fast_dls(subset, bs=30, num_workers=0, cache_dir=tmp_path/'c', verbose=False)
    d = tiny_dls(subset, bs=30, num_workers=0)
    (xf,yf),(xd,yd) = f.valid.one_batch(),d.valid.one_batch()
    assert torch.equal(xf, xd) and torch.equal(yf, yd)


def test_worker_random_states(cache_dir):
    "Two workers augment differently; a new epoch draws anew; the same seed gives the same batches"
    aug = iaa.Add((-50, 50))
    dls = fast_dls(SAMPLE, bs=16, num_workers=2, aug=aug, seed=0, cache_dir=cache_dir, verbose=False)
    dl = dls.train.new(shuffle=False, after_batch=[])
    raw = dls.train_ds.cache.x
    def offsets(n=4):
        "The value added to each image of the first `n` batches (the median difference to the cached image)"
        res = []
        for i,(x,_) in enumerate(dl):
            r = torch.from_numpy(np.asarray(raw[i*16:(i+1)*16])).permute(0,3,1,2).int()
            res.append([int(v) for v in (x.int() - r).flatten(1).median(1).values])
            if i == n-1: break
        return res
    set_seed(1); e1 = offsets()
    e2 = offsets()
    set_seed(1); e3 = offsets()
    assert e1[0] != e1[1] and e1[2] != e1[3], e1   # batches 0 and 1 come from different workers
    assert len({v for b in e1 for v in b}) > 20
    assert e2 != e1 and e3 == e1


def test_resize_show_batch_test_dl(sample_dls):
    f,_ = sample_dls
    r = resize_dls(f, 32)
    assert type(r.train) is FastDL and r.train.cache is f.train.cache and r.train.aug_impl == 'fast'
    assert list(r.train.before_batch.fs) == list(f.train.before_batch.fs)
    assert r.train.one_batch()[0].shape == (32, 3, 32, 32) and r.valid.one_batch()[0].shape == (32, 3, 32, 32)
    r.show_batch(max_n=4)
    tdl = f.test_dl(list(f.valid_ds.items[:8]))
    assert tdl.cache is None   # files: the item pipeline
    assert torch.equal(tdl.one_batch()[0], f.valid.one_batch()[0][:8])
    # other item transforms: the loader falls back to the item pipeline
    from fastai.vision.all import FlipItem, ToTensor
    assert f.valid.new(after_item=[FlipItem(p=1.), ToTensor()]).cache is None


def test_learner_train_tta_export_predict(subset, tmp_path):
    from tiny_fastai.train import tiny_learner, evaluate, export_learner, predict_files
    dls = fast_dls(subset, size=32, bs=16, num_workers=0, seed=0, cache_dir=tmp_path/'c', verbose=False)
    learn = tiny_learner(dls, 'tiny', path=tmp_path, checkpoint=None)
    learn.fit_one_cycle(1, 3e-3)
    assert len(learn.recorder.values) == 1
    ev = evaluate(learn, n=2)
    assert 0 <= ev['top1'] <= 1 and 0 <= ev['top1_tta'] <= 1 and ev['n_valid'] == 30
    fn = export_learner(learn, tmp_path/'model.pkl')
    assert fn.stat().st_size < 20_000_000    # the cache is not in the export
    l2 = load_learner(fn)
    img = dls.valid_ds.items[0]
    cls,idx,probs = l2.predict(img)
    assert cls in dls.vocab and abs(float(probs.sum()) - 1) < 1e-4
    assert predict_files(l2, [img], k=2)[0]['top'][0][0] == cls


# ---------------------------------------------------------------- find_max_bs

def test_largest_search():
    tried = []
    def fits(b): tried.append(b); return b <= 1000
    assert _largest(fits, 64, 8192) == 1000 and len(tried) < 15
    assert _largest(lambda b: b <= 1000, 64, 512) == 512
    assert _largest(lambda b: b <= 5, 64, 512) == 0
    assert _largest(lambda b: b <= 100, 256, 4096) == 96
    assert _largest(lambda b: b <= 77, 8, 4096, multiple=1) == 77


def test_find_max_bs_cpu(sample_dls):
    from tiny_fastai.models import get_arch
    learn = Learner(sample_dls[0], get_arch('tiny')(n_out=10), loss_func=CrossEntropyLossFlat())
    with pytest.warns(UserWarning, match='not a GPU'): assert find_max_bs(learn, 64) == 32
    with pytest.warns(UserWarning, match='not a GPU'): assert find_max_bs(learn, 64, cpu_bs=100) == 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_find_max_bs_gpu(sample_dls):
    from tiny_fastai.models import get_arch
    learn = Learner(sample_dls[0], get_arch('tiny')(n_out=10), loss_func=CrossEntropyLossFlat()).to('cuda')
    w = [p.detach().clone() for p in learn.model.state_dict().values()]
    bs = find_max_bs(learn, 64, max_bs=1024)
    assert bs % 8 == 0 and 8 <= bs <= 1024
    assert all(torch.equal(a, b) for a,b in zip(w, learn.model.state_dict().values()))   # weights and statistics untouched
    assert all(p.grad is None for p in learn.model.parameters())


# ---------------------------------------------------------------- the full dataset (TINY_IMAGENET)

@pytest.fixture(scope='module')
def full_path(tmp_path_factory):
    src = os.environ.get('TINY_IMAGENET')
    if not src: pytest.skip('set TINY_IMAGENET to the Tiny ImageNet archive or folder to run the full-dataset tests')
    if Path(src).is_dir(): return get_tiny_imagenet(src)
    return get_tiny_imagenet(src, dest=tmp_path_factory.mktemp('full'))


def test_full_val_cache(full_path, tmp_path):
    "The cache of the official val set holds its 10,000 images in the DataBlock path's order, with its labels and pixels"
    root,files,labels = _split(full_path)
    c = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    assert c.x.shape == (10_000, 64, 64, 3) and len(set(c.y.tolist())) == 200
    d = tiny_dls(full_path, bs=128, num_workers=0, aug=None)
    assert list(d.valid_ds.items) == files
    for i,(x,y) in enumerate(d.valid.new(after_batch=[])):
        assert torch.equal(x, torch.from_numpy(np.asarray(c.x[i*128:(i+1)*128])).permute(0,3,1,2))
        assert y.tolist() == c.y[i*128:(i+1)*128].tolist()
        if i == 2: break
    rng = np.random.default_rng(0)
    for i in rng.choice(10_000, 50, replace=False): assert np.array_equal(c.x[i], np.asarray(open_image(files[i])))
