"""Tests of tiny_fastai.loaders: `tiny_dls` (labels, vocab, normalisation, odd images, errors) and `resize_dls`; with
`cache=True`, the array cache (build, reuse, rebuild on change, bad images), the same items, labels and pixels as the
DataBlock path, per-worker random states and kept workers, fastai integration (resize, show_batch, test_dl, training,
TTA, export and predict).
The full-dataset tests run when TINY_IMAGENET names the archive or an extracted folder (conftest.py)."""
import contextlib, errno, gc, json, os, pickle, re, shutil, signal, subprocess, sys, time, warnings, weakref, zlib
from pathlib import Path
import numpy as np, pytest, torch
import imgaug.augmenters as iaa
import matplotlib; matplotlib.use('Agg')
from PIL import Image
from fastai.vision.all import (TensorImage, TensorCategory, TfmdDL, DataLoaders, Learner, CrossEntropyLossFlat, load_learner,
                               set_seed, first)
import tiny_fastai.loaders as tloaders, tiny_fastai.cache as tcache
from tiny_fastai.augment import ImgAugTransform
from tiny_fastai.data import TINY_STATS, LayoutError, scan, class_names, sample_path, make_subset, open_image
from tiny_fastai.loaders import tiny_dls, resize_dls, BatchResize, FastDL
from tiny_fastai.cache import build_cache, ArrayCache, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sample_path()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "PyTorch with one thread: on a busy 2-core machine more threads spin and run 10x slower"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)




@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory): return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def sample_dls(cache_dir):
    "Array-cache and DataBlock loaders on the bundled sample, same settings"
    return (tiny_dls(SAMPLE, bs=32, num_workers=0, seed=0, cache=True, cache_dir=cache_dir, verbose=False),
            tiny_dls(SAMPLE, bs=32, num_workers=0, seed=0))


@pytest.fixture
def subset(tmp_path): return make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=20, n_val=10)


def _annotations(path):
    return dict(l.split('\t')[:2] for l in (Path(path)/'val'/'val_annotations.txt').read_text().splitlines() if l.strip())


def _vocab_labels(dls, ds):
    "Readable label of every item of `ds`, without opening the images"
    return [dls.vocab[int(y)] for y in ds.tls[1]]


def _check_val_labels(dls, path):
    ann, names = _annotations(path), class_names(path)
    items, labels = dls.valid_ds.items, _vocab_labels(dls, dls.valid_ds)
    assert len(items) == len(ann)
    for f, lbl in zip(items, labels): assert lbl == names[ann[Path(f).name]], f


# ---------------------------------------------------------------- the DataBlock loader

def test_sample_dls():
    dls = tiny_dls(SAMPLE, bs=32, num_workers=0)
    names = class_names(SAMPLE)
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c) == (1000, 500, 10)
    assert list(dls.vocab) == [names[w] for w in sorted(names)]
    _check_val_labels(dls, SAMPLE)
    tr = _vocab_labels(dls, dls.train_ds)
    assert all(lbl == names[Path(f).parent.parent.name] for f, lbl in zip(dls.train_ds.items, tr))
    xb, yb = dls.one_batch()
    assert xb.shape == (32, 3, 64, 64) and yb.shape == (32,)
    # normalised with the Tiny ImageNet statistics
    xv, _ = dls.valid.one_batch()
    m = torch.tensor(TINY_STATS[0])[None, :, None, None]; s = torch.tensor(TINY_STATS[1])[None, :, None, None]
    raw = xv*s + m
    assert 0 <= raw.min() and raw.max() <= 1.0001


def test_resize_dls():
    dls = tiny_dls(SAMPLE, bs=16, num_workers=0)
    for sz in (16, 32, 64, (24, 40)):
        d = resize_dls(dls, sz)
        assert isinstance(d, DataLoaders) and len(d.loaders) == 2
        assert d.path == dls.path and d.device == dls.device and list(d.vocab) == list(dls.vocab)
        assert d.train_ds is dls.train_ds and d.valid_ds is dls.valid_ds
        assert d.train.shuffle and not d.valid.shuffle and d.train.bs == 16
        assert d.train.before_batch.fs == dls.train.before_batch.fs  # the same augmentation
        hw = (sz, sz) if isinstance(sz, int) else sz
        assert d.valid.bs == 10   # the largest batch up to 16 that divides the 500 val images: every batch one shape
        for dl in (d.train, d.valid):
            xb, yb = dl.one_batch()
            assert xb.shape == (dl.bs, 3, *hw) and yb.shape == (dl.bs,)
    # the original loaders are unchanged
    assert dls.one_batch()[0].shape[-1] == 64
    # chained resizes replace the size instead of adding transforms
    d2 = resize_dls(resize_dls(dls, 16), 32)
    assert sum(isinstance(f, BatchResize) for f in d2.train.after_batch.fs) == 1


def test_resize_dls_does_not_reread_folder(monkeypatch):
    dls = tiny_dls(SAMPLE, bs=8, num_workers=0)
    def boom(*a, **k): raise AssertionError('folder read again')
    monkeypatch.setattr(tloaders, 'scan', boom); monkeypatch.setattr(tloaders.os, 'scandir', boom)
    assert resize_dls(dls, 32).one_batch()[0].shape == (8, 3, 32, 32)


def test_resize_dls_keeps_loader_class():
    class MyDL(TfmdDL): pass
    dls = tiny_dls(SAMPLE, bs=8, num_workers=0, dl_type=MyDL)
    d = resize_dls(dls, 16)
    assert all(type(dl) is MyDL for dl in d.loaders)
    assert d.valid.one_batch()[0].shape == (5, 3, 16, 16)   # 500 val images: batches of 5 (the largest divisor up to 8)


def test_odd_images_become_rgb_64(copy):
    "Greyscale, CMYK, RGBA-PNG and odd-sized files all come out as 3x64x64"
    fs = sorted((copy/'train').glob('*/images/*.JPEG'))[:4]
    im = Image.open(fs[0]).convert('RGB')
    im.convert('L').save(fs[0]); im.convert('CMYK').save(fs[1])
    im.convert('RGBA').save(fs[2].with_suffix('.png')); fs[2].unlink()
    im.resize((80, 50)).save(fs[3])
    dls = tiny_dls(copy, bs=4, num_workers=0, aug=None)
    items = list(dls.train_ds.items)
    assert len(items) == 1000
    idx = [items.index(f) for f in [fs[0], fs[1], fs[2].with_suffix('.png'), fs[3]]]
    xb, yb = dls.train.after_batch(dls.train.create_batch([dls.train.do_item(i) for i in idx]))
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4,)
    g = xb[0]  # the greyscale one has equal channels
    assert torch.allclose(g[0]*TINY_STATS[1][0] + TINY_STATS[0][0], g[1]*TINY_STATS[1][1] + TINY_STATS[0][1], atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match='bs'): tiny_dls(SAMPLE, bs=0)
    with pytest.raises(ValueError, match='size'): tiny_dls(SAMPLE, size=0)
    with pytest.raises(ValueError, match='aug'): tiny_dls(SAMPLE, aug='strong')


def test_layout_errors_and_undecodable_images(copy):
    "`tiny_dls` refuses a broken layout with `scan`'s error; with `skip_bad` it leaves undecodable files out, with a warning"
    with pytest.raises(LayoutError, match='does not exist'): tiny_dls(copy/'nope')
    bad = sorted((copy/'train').glob('*/images/*.JPEG'))[5]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    junk = sorted((copy/'val'/'images').iterdir())[7]
    junk.write_bytes(b'this is not an image')
    with pytest.raises(LayoutError, match='cannot be decoded'): tiny_dls(copy, check_images=True)
    with pytest.warns(UserWarning, match='skipped 2 undecodable'): dls = tiny_dls(copy, skip_bad=True, num_workers=0)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (999, 499) and sorted(dls.bad_files) == sorted([bad, junk])
    # without the check, loading the file fails with a message naming it
    dls = tiny_dls(copy, num_workers=0, aug=None)
    i = list(dls.train_ds.items).index(bad)
    with pytest.raises(LayoutError, match=f'cannot decode image .*{bad.name}'): dls.train_ds[i]


# ---------------------------------------------------------------- the array cache

def _split(path, split='valid'):
    lay = scan(path)
    rows = lay.train if split == 'train' else lay.valid
    return lay.path, [f for f,_ in rows], [lay.wnids.index(w) for _,w in rows]


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
    assert sorted(p.name for p in cdir.glob('*.npy')) == sorted([c5.xf.name, c5.yf.name, c5.xf.name.replace('.x.npy', '.sum.npy')])
    assert not list(cdir.glob('.*.tmp'))
    # a broken cache file is rebuilt
    c5.xf.write_bytes(b'garbage')
    c6 = build_cache(root, 'valid', files[1:], [2-l for l in labels[1:]], cdir)
    assert c6.x.shape == (29, 64, 64, 3)
    # pickles as its file names
    s = pickle.dumps(c6)
    assert len(s) < 1000 and np.array_equal(pickle.loads(s).x, c6.x)


@contextlib.contextmanager
def _no_hang(seconds):
    "Fail (instead of waiting forever) if the block takes more than `seconds`"
    def boom(*a): raise TimeoutError(f'still waiting after {seconds} s')
    old = signal.signal(signal.SIGALRM, boom); signal.alarm(seconds)
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)


def test_cache_refused_on_a_full_disk(subset, tmp_path, monkeypatch):
    "Too little free space: one message naming the file, what it needs and what is free, before anything is written"
    root,files,labels = _split(subset)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: real(p)._replace(free=100_000))
    with pytest.raises(OSError) as e: build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and msg.startswith('no space left on device: ') and re.search(r'\.x\.npy needs 4\d\d\.\d kB, 100\.0 kB free; ', msg), msg
    assert not [p for p in (tmp_path/'c').iterdir() if not p.name.endswith('.lock')]


@pytest.mark.parametrize('how', ['dies', 'disk full'])
def test_cache_worker_that_dies_or_fills_the_disk(how, tmp_path, monkeypatch):
    "A decoding process that dies (killed: a SIGBUS on a full disk did this) or hits a full disk is one error, not a hang; nothing is kept"
    root,files,labels = _split(SAMPLE, 'train')
    parent, real = os.getpid(), tcache._decode
    def decode(fn, size):
        if os.getpid() == parent: return real(fn, size)
        if how == 'dies': os._exit(7)
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(tcache, '_decode', decode)
    with _no_hang(120), pytest.raises((RuntimeError, OSError)) as e:
        build_cache(root, 'train', files, labels, tmp_path/'c', n_workers=2, verbose=False)
    if how == 'dies': assert 'a process decoding images into' in str(e.value) and 'died' in str(e.value)
    else: assert str(e.value).startswith('no space left on device: writing ') and e.value.errno == errno.ENOSPC
    assert '.x.npy' in str(e.value)
    assert not [p for p in (tmp_path/'c').iterdir() if not p.name.endswith('.lock')]


def test_cache_temp_files_of_killed_builds_removed(subset, tmp_path):
    "A killed build's temporary files go at the next build; a live process's stay"
    root,files,labels = _split(subset)
    cdir = tmp_path/'c'; cdir.mkdir()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    (cdir/f'.valid-64px-x-y.x.npy.{dead}.tmp').write_bytes(b'x'*1000)
    (cdir/f'.valid-64px-x-y.y.npy.{os.getppid()}.tmp').write_bytes(b'x')
    build_cache(root, 'valid', files, labels, cdir, verbose=False)
    assert sorted(p.name for p in cdir.glob('.*.tmp')) == [f'.valid-64px-x-y.y.npy.{os.getppid()}.tmp']


def test_cache_with_changed_bytes_is_not_served(subset, tmp_path):
    "Pixels changed on disk after the build (zeroed, overwritten) are found at load: the cache is built again, with a warning"
    root,files,labels = _split(subset)
    c = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    want = np.array(c.x)
    with open(c.xf, 'r+b') as f: f.seek(c.x.offset + 17*64*64*3 + 100); f.write(bytes(50))   # a few zeroed bytes of image 17
    del c; gc.collect()
    with pytest.warns(UserWarning, match=r'the images of 1 block\(s\) differ .* \(first: images 0 to 29\); it is built again'):
        c2 = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    assert np.array_equal(c2.x, want)
    with warnings.catch_warnings(): warnings.simplefilter('error'); build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)


def test_cache_check_budget():
    "Above the budget, a random sample of blocks is checked; a damaged block is found when it is drawn"
    x = np.random.default_rng(0).integers(0, 255, (10*256, 4, 4, 3), dtype=np.uint8)
    sums = np.array([zlib.crc32(x[i:i+256]) for i in range(0, len(x), 256)], dtype=np.uint32)
    x[5*256] ^= 1
    assert tcache._bad_blocks(x, sums) == [5]
    per = 256*4*4*3
    found = [tcache._bad_blocks(x, sums, budget=3*per) for _ in range(50)]
    assert all(f in ([], [5]) for f in found) and [5] in found and [] in found


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
        tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    assert not [p for p in (tmp_path/'c').iterdir() if p.suffix in ('.npy', '.tmp')]   # nothing half-written is left
    with pytest.warns(UserWarning, match='skipped 1 undecodable'):
        dls = tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', skip_bad=True, verbose=False)
    assert len(dls.train_ds) == 59 and len(dls.train_ds.cache) == 59 and bad not in dls.train_ds.items
    assert dls.bad_files == [bad]


def test_default_cache_dir(tmp_path):
    assert default_cache_dir(tmp_path) == tmp_path.resolve()/'.cache'
    d = default_cache_dir(SAMPLE)   # never inside the installed package
    assert SAMPLE.resolve() not in d.parents and 'tiny_fastai' in str(d)


# ---------------------------------------------------------------- the array loader (cache=True)

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
    "Seeded alike, both paths give the same augmented training batches"
    bs = []
    for dls in sample_dls:
        torch.manual_seed(3)
        bs.append([b for _,b in zip(range(3), dls.train.new(shuffle=False))])
    for a,b in zip(*bs): assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    raw = first(sample_dls[0].train.new(shuffle=False, before_batch=[]))[0]
    assert (raw != bs[0][0][0]).float().mean() > 0.3


def test_cache_option(cache_dir):
    dls = tiny_dls(SAMPLE, bs=16, cache=True, num_workers=0, cache_dir=cache_dir, verbose=False, aug=0.5)
    assert type(dls.train) is FastDL and dls.train.cache is not None and dls.cache_dir == cache_dir
    assert isinstance(dls.train.before_batch.fs[0], ImgAugTransform)
    assert dls.train.one_batch()[0].shape == (16, 3, 64, 64)
    assert not dls.train.pin_memory   # pinned only for a GPU
    with pytest.warns(DeprecationWarning, match='cache'):   # the old name of the option
        old = tiny_dls(SAMPLE, bs=16, fast=True, num_workers=0, cache_dir=cache_dir, verbose=False)
    assert type(old.train) is FastDL and old.train.cache.xf == dls.train.cache.xf
    with pytest.raises(ValueError, match='bs'): tiny_dls(SAMPLE, bs=0, cache=True)
    with pytest.raises(ValueError, match='aug_impl'): tiny_dls(SAMPLE, aug_impl='gpu', cache=True, cache_dir=cache_dir, verbose=False)


def test_imgaug_executor_gives_the_same_batches(cache_dir):
    dls = [tiny_dls(SAMPLE, bs=32, num_workers=0, seed=0, cache=True, cache_dir=cache_dir, verbose=False, aug_impl=i) for i in ('fast', 'imgaug')]
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
    f = tiny_dls(subset, bs=30, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    d = tiny_dls(subset, bs=30, num_workers=0)
    (xf,yf),(xd,yd) = f.valid.one_batch(),d.valid.one_batch()
    assert torch.equal(xf, xd) and torch.equal(yf, yd)


def test_worker_random_states(cache_dir):
    "Two workers augment differently; a new epoch draws anew; the same seed gives the same batches"
    aug = iaa.Add((-50, 50))
    dls = tiny_dls(SAMPLE, bs=16, num_workers=2, aug=aug, seed=0, cache=True, cache_dir=cache_dir, verbose=False)
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


def test_kept_workers(subset, tmp_path):
    """Workers are kept from one pass to the next (the same processes), and give exactly the batches new workers give
    (fastai's behaviour, `persistent_workers=False`): order, augmentation, over two epochs; PyTorch's RNG ends the same"""
    dls = tiny_dls(subset, bs=10, num_workers=2, aug=0.5, seed=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    assert dls.train.fake_l.persistent_workers and dls.valid.fake_l.persistent_workers
    def run(persistent):
        set_seed(0); dl = dls.train.new(persistent_workers=persistent, after_batch=[])
        set_seed(1); epochs, pids = [], []
        for _ in range(2):
            epochs.append([(x.float().mean((1, 2, 3)), y) for x, y in dl])
            pids.append(None if dl._workers is None else [p.pid for p in dl._workers._workers])
        return epochs, pids, torch.rand(1)
    (kept, kpids, kr), (new, npids, nr) = run(True), run(False)
    assert kpids[0] == kpids[1] and len(kpids[0]) == 2 and npids == [None, None]
    assert len(kept[0]) == 6 and not torch.equal(kept[0][0][0], kept[1][0][0])   # a new epoch: new order and augmentation
    for ek, en in zip(kept, new):
        for (xk, yk), (xn, yn) in zip(ek, en): assert torch.equal(xk, xn) and torch.equal(yk, yn)
    assert torch.equal(kr, nr)


def test_kept_workers_one_set_per_dataset(cache_dir):
    """The loaders of `resize_dls` keep the same workers (no new processes at a stage change); a loader of the same
    dataset with other workers (here another batch size) ends them when it starts its own"""
    dls = tiny_dls(SAMPLE, bs=100, num_workers=1, aug=None, cache=True, cache_dir=cache_dir, verbose=False)
    first(dls.train); first(dls.valid)
    assert dls.train._workers is not None
    assert dls.valid.fake_l.num_workers == 0 and dls.valid._workers is None   # the val set is only indexed: no workers
    pids = [p.pid for p in dls.train._workers._workers]
    r = resize_dls(dls, 32)
    assert r.cache_dir == cache_dir and r.train.fake_l.persistent_workers
    assert first(r.train)[0].shape == (100, 3, 32, 32)
    assert r.train._workers is dls.train._workers and [p.pid for p in r.train._workers._workers] == pids
    assert first(dls.train)[0].shape == (100, 3, 64, 64)   # the first size, from the same workers
    other = dls.train.new(bs=50); first(other)
    assert dls.train._workers is None and r.train._workers is None and other._workers is not None
    other.close_workers()


def test_workers_make_the_next_pass_ahead(subset, tmp_path):
    """When a training pass ends, the kept workers already make the next one; the next pass takes those batches only if
    it draws the same pass (here: yes after a plain epoch, no after `set_seed` or with the loader's RNG reseeded), and
    gives what new workers give in every case"""
    import random
    dls = tiny_dls(subset, bs=10, num_workers=2, aug=0.5, seed=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    def run(persistent):
        set_seed(0); dl = dls.train.new(persistent_workers=persistent, after_batch=[])
        out, ahead = [], []
        for step in range(4):
            if step == 2: set_seed(7)                    # the RNGs change between passes: the work ahead is dropped
            if step == 3: dl.rng = random.Random(3)
            out.append([(x.float().mean((1, 2, 3)), y) for x, y in dl])
            ahead.append(dl._pool.ahead)
        return out, ahead, torch.rand(1)
    (kept, ahead, kr), (new, _, nr) = run(True), run(False)
    assert ahead == [True]*4   # each pass ended with the workers started on the next one
    for ek, en in zip(kept, new):
        assert len(ek) == len(en) == 6
        for (xk, yk), (xn, yn) in zip(ek, en): assert torch.equal(xk, xn) and torch.equal(yk, yn)
    assert torch.equal(kr, nr)   # and PyTorch's RNG where fastai's loader leaves it


def test_kept_workers_end_with_their_loader(cache_dir):
    "A dropped loader is garbage-collected and its kept workers end at once (PyTorch alone would wait 5 s for each)"
    dls = tiny_dls(SAMPLE, bs=100, num_workers=2, aug=None, cache=True, cache_dir=cache_dir, verbose=False)
    dl = dls.train.new(bs=50); first(dl)   # its own workers (another batch size)
    procs = list(dl._workers._workers); w = weakref.ref(dl); del dl
    t = time.perf_counter(); gc.collect()
    assert w() is None and time.perf_counter() - t < 3 and not any(p.is_alive() for p in procs)


def test_plain_batch_transforms_equal_fastais_pipeline(sample_dls):
    "`FastDL` runs `tiny_datablock`'s batch transforms as plain tensor ops: the same pixels and types as fastai's `Pipeline`"
    f, _ = sample_dls
    for size in (64, 24):
        dl = resize_dls(f, size).train
        raw = dl.cached_batch(dl.cache, np.arange(8))
        x, y = dl._after_batch(raw)
        fx, fy = dl.after_batch(raw)
        assert type(x) is TensorImage and type(y) is TensorCategory and x.shape == (8, 3, size, size)
        assert torch.equal(x, fx) and torch.equal(y, fy)
        assert torch.equal(dl.decode((x, y))[0], dl.decode((fx, fy))[0])   # show_batch's decoding as well
    odd = f.train.new(after_batch=[BatchResize(16)])   # another pipeline: fastai's
    assert odd._after_batch(raw)[0].dtype == torch.uint8


def test_data_info_survives_resize(tmp_path):
    "What the loaders carry (`dls.info`: undecodable files, the cache folder) is kept by `resize_dls` and by `new_like`"
    from tiny_fastai.loaders import DataInfo, TinyDataLoaders
    sub = make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=20, n_val=10)
    bad = sorted((sub/'train').rglob('*.JPEG'))[0]; bad.write_bytes(b'not an image')
    with pytest.warns(UserWarning, match='skipped 1 undecodable'):
        dls = tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', skip_bad=True, verbose=False)
    assert isinstance(dls, TinyDataLoaders) and dls.info == DataInfo([bad], tmp_path/'c')
    r = resize_dls(resize_dls(dls, 32), 16)
    assert r.info is dls.info and r.bad_files == [bad] and r.cache_dir == tmp_path/'c'
    assert r.train.array_cache is dls.train.array_cache and r.valid.cache is dls.valid.cache
    plain = tiny_dls(sub, num_workers=0, skip_bad=True)
    assert plain.info.bad_files == [bad] and plain.info.cache_dir is None


def test_resize_show_batch_test_dl(sample_dls):
    f,_ = sample_dls
    r = resize_dls(f, 32)
    assert type(r.train) is FastDL and r.train.cache is f.train.cache and r.train.aug_impl == 'fast'
    assert list(r.train.before_batch.fs) == list(f.train.before_batch.fs)
    assert r.train.one_batch()[0].shape == (32, 3, 32, 32) and r.valid.one_batch()[0].shape == (r.valid.bs, 3, 32, 32)
    r.show_batch(max_n=4)
    tdl = f.test_dl(list(f.valid_ds.items[:8]))
    assert tdl.cache is None   # files: the item pipeline
    assert torch.equal(tdl.one_batch()[0], f.valid.one_batch()[0][:8])
    # other item transforms: the loader falls back to the item pipeline
    from fastai.vision.all import FlipItem, ToTensor
    assert f.valid.new(after_item=[FlipItem(p=1.), ToTensor()]).cache is None


def test_learner_train_tta_export_predict(subset, tmp_path):
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.evaluate import evaluate
    from tiny_fastai.infer import export_learner, predict_files
    dls = tiny_dls(subset, size=32, bs=16, num_workers=0, seed=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
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


# ---------------------------------------------------------------- the full dataset (TINY_IMAGENET)

def test_full_dls(full_path):
    dls = tiny_dls(full_path, bs=64, num_workers=0)
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c, len(set(dls.vocab))) == (100_000, 10_000, 200, 200)
    assert 'goldfish' in dls.vocab
    _check_val_labels(dls, full_path)
    for sz in (16, 32, 64):
        d = resize_dls(dls, sz)
        assert d.valid.bs == 50   # divides the 10,000 val images: one compiled graph for validation
        for dl in (d.train, d.valid):
            xb, yb = dl.one_batch()
            assert xb.shape == (dl.bs, 3, sz, sz) and yb.shape == (dl.bs,)


def test_full_val_cache(full_path, tmp_path):
    "The cache of the official val set holds its 10,000 images in the DataBlock path's order, with its labels and pixels"
    root,files,labels = _split(full_path)
    c = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    assert c.x.shape == (10_000, 64, 64, 3) and len(set(c.y.tolist())) == 200
    d = tiny_dls(full_path, bs=128, num_workers=0, aug=None)
    assert list(d.valid_ds.items) == files
    b = d.valid.bs   # 125: divides the 10,000 val images
    for i,(x,y) in enumerate(d.valid.new(after_batch=[])):
        assert torch.equal(x, torch.from_numpy(np.asarray(c.x[i*b:(i+1)*b])).permute(0,3,1,2))
        assert y.tolist() == c.y[i*b:(i+1)*b].tolist()
        if i == 2: break
    rng = np.random.default_rng(0)
    for i in rng.choice(10_000, 50, replace=False): assert np.array_equal(c.x[i], np.asarray(open_image(files[i])))
