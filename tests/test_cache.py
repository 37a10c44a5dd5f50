"""Tests of the way from the data to the array cache (issues 16 and 18): the cache decoded straight from an archive (the
same items, labels and pixels as from the extracted folder; the folder extracted in the background), a cache up to date
trusted without decoding again, a build killed mid-way (no orphan workers, the next build does not hang), a stale cache
after files rewritten with the same size and time, the cache folder's settings (XDG_CACHE_HOME, an unwritable HOME)
and file names that are not UTF-8."""
import os, pathlib, shutil, subprocess, sys, tarfile, time, warnings, zipfile
from pathlib import Path
import numpy as np, pytest, psutil
from PIL import Image
import tiny_fastai.data as tdata, tiny_fastai.archive as tarchive, tiny_fastai.cache as tcache, tiny_fastai.loaders as tloaders
from tiny_fastai.data import LayoutError, scan, sample_path, make_subset, open_image
from tiny_fastai.archive import get_tiny_imagenet, archive_of
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.cache import build_cache, default_cache_dir
from tiny_fastai.recipe import data_id

SAMPLE = sample_path()


@pytest.fixture
def subset(tmp_path): return make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=20, n_val=10)


def _split(path, split='valid'):
    lay = scan(path)
    rows = lay.train if split == 'train' else lay.valid
    return lay.path, [f for f,_ in rows], [lay.wnids.index(w) for _,w in rows]


def _archive(folder, dest, kind='tar.gz'):
    if kind == 'zip':
        with zipfile.ZipFile(dest, 'w') as z:
            for p in sorted(Path(folder).rglob('*')): z.write(p, 'tiny-imagenet-200/' + str(p.relative_to(folder)))
    else:
        with tarfile.open(dest, 'w:gz') as t: t.add(folder, 'tiny-imagenet-200')
    return dest


def _rel(dls):
    return [[(str(Path(f).relative_to(dls.path)), int(y)) for f,y in zip(ds.items, ds.tls[1])] for ds in (dls.train_ds, dls.valid_ds)]


# ---------------------------------------------------------------- the cache read from the archive

@pytest.mark.parametrize('kind', ['tar.gz', 'zip'])
def test_cache_from_archive(subset, tmp_path, kind, capsys):
    "Decoded from the archive's bytes: the items, labels and pixels of the folder path; the folder is extracted in the background; a second run reads nothing"
    arch = _archive(subset, tmp_path/f'sub.{kind}', kind)
    want = tiny_dls(subset, bs=8, num_workers=0, cache=True, cache_dir=tmp_path/'c0', verbose=False, aug=None)
    p = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    assert archive_of(p) == arch.resolve()
    dls = tiny_dls(p, bs=8, num_workers=0, cache=True, aug=None)
    assert 'reading' in capsys.readouterr().out
    assert _rel(dls) == _rel(want) and list(dls.vocab) == list(want.vocab)
    for a,b in zip(dls.loaders, want.loaders):
        assert np.array_equal(a.dataset.cache.x, b.dataset.cache.x) and np.array_equal(a.dataset.cache.y, b.dataset.cache.y)
    assert dls.cache_dir == (tmp_path/'d').resolve()/'.cache'   # beside the folder, not in it (the extraction renames it into place)
    assert np.array_equal(np.asarray(open_image(dls.valid_ds.items[3])), dls.valid.dataset.cache.x[3])   # the files: once extracted
    assert tdata.extracted_from(p)['archive'] == str(arch.resolve())
    p2 = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    dls2 = tiny_dls(p2, bs=8, num_workers=0, cache=True, aug=None)
    assert 'reading' not in capsys.readouterr().out and _rel(dls2) == _rel(dls)


def test_training_path_does_not_wait_for_the_extraction(subset, tmp_path, monkeypatch):
    "With cache=True the loaders are ready (and give batches) before the background extraction ends; what reads files waits for it"
    real, go = tarchive._find_root, tmp_path/'go'
    def held(*a):   # in the extracting process, once its checks passed and the files are out: nothing until the test says so
        while not go.exists(): time.sleep(0.05)
        return real(*a)
    monkeypatch.setattr(tarchive, '_find_root', held)
    p = get_tiny_imagenet(_archive(subset, tmp_path/'s.tar.gz'), dest=tmp_path/'d', background=True)
    dls = tiny_dls(p, bs=8, num_workers=0, cache=True, verbose=False)
    x,y = dls.train.one_batch()
    assert x.shape == (8, 3, 64, 64) and not p.exists()   # trained on before the folder exists
    go.touch()
    assert np.array_equal(np.asarray(open_image(dls.valid_ds.items[5])), dls.valid.dataset.cache.x[5])   # waited for the folder
    assert p.exists()


def test_one_extraction_for_several_processes(subset, tmp_path):
    "A process (another DDP rank) that finds a live process extracting the archive waits for that one instead of extracting it again"
    arch, d = _archive(subset, tmp_path/'s.tar.gz'), tmp_path/'d'
    d.mkdir()
    other = subprocess.Popen([sys.executable, '-c', "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); "
                              "print('extracting', flush=True); time.sleep(60)", str(d/'.tiny-imagenet-200.extract.lock')],
                             stdout=subprocess.PIPE, text=True)   # stands for the rank that extracts
    try:
        assert other.stdout.readline().strip() == 'extracting'
        before = {k.pid for k in psutil.Process().children()}
        p = get_tiny_imagenet(arch, dest=d, background=True)
        assert {k.pid for k in psutil.Process().children()} == before   # no second extraction started
        get_tiny_imagenet(arch, dest=d)   # the other one finishes ...
        other.kill(); other.wait()        # ... and ends
        assert tdata.wait_extracted(p) and (p/'wnids.txt').exists()
    finally: other.kill(); other.wait(); other.stdout.close()


def test_rewritten_archive_same_size_and_time_is_read_again(tmp_path):
    "An archive replaced by another of the same size, put back with the old modification time, is not served the old cache"
    d = make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=5, n_val=5)
    f = sorted((d/'train').glob('*/images/*.JPEG'))[0]
    im = np.asarray(Image.open(f).convert('RGB'))
    Image.fromarray(im).save(f, format='BMP')   # a fixed size for fixed dimensions
    arch = tmp_path/'a.tar'
    with tarfile.open(arch, 'w') as t: t.add(d, 'tiny-imagenet-200')
    p = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    x0 = tiny_dls(p, num_workers=0, cache=True, verbose=False).train_ds.cache.x.copy()
    st = arch.stat()
    Image.fromarray(255 - im).save(f, format='BMP')
    with tarfile.open(tmp_path/'b.tar', 'w') as t: t.add(d, 'tiny-imagenet-200')
    b2 = (tmp_path/'b.tar').read_bytes()
    assert len(b2) == st.st_size
    arch.write_bytes(b2); os.utime(arch, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert arch.stat().st_size == st.st_size and arch.stat().st_mtime_ns == st.st_mtime_ns
    x1 = tiny_dls(get_tiny_imagenet(arch, dest=tmp_path/'d', background=True), num_workers=0, cache=True, verbose=False).train_ds.cache.x
    assert not np.array_equal(x0, x1)


def test_archive_not_official_layout_falls_back_to_the_folder(subset, tmp_path):
    "An archive that is not exactly the official layout: the extracted folder is scanned, and its problem named"
    (subset/'val'/'val_annotations.txt').write_text('')
    arch = _archive(subset, tmp_path/'s.tar.gz')
    with pytest.raises(LayoutError, match='val set is empty'):
        tiny_dls(get_tiny_imagenet(arch, dest=tmp_path/'d', background=True), num_workers=0, cache=True, verbose=False)


def test_undecodable_image_in_the_archive(subset, tmp_path):
    bad = sorted((subset/'train').glob('*/images/*.JPEG'))[3]
    bad.write_bytes(b'not a jpeg')
    p = get_tiny_imagenet(_archive(subset, tmp_path/'s.tar.gz'), dest=tmp_path/'d', background=True)
    with pytest.raises(LayoutError, match=f'cannot decode image .*{bad.name}'): tiny_dls(p, num_workers=0, cache=True, verbose=False)
    with pytest.warns(UserWarning, match=f'skipped 1 undecodable.*{bad.name}'):
        dls = tiny_dls(p, num_workers=0, cache=True, skip_bad=True, verbose=False)
    assert len(dls.train_ds) == 59 and len(dls.train_ds.cache) == 59 and [f.name for f in dls.bad_files] == [bad.name]
    x,y = dls.train_ds.cache.get(np.arange(59))
    assert np.array_equal(x[3], np.asarray(open_image(dls.train_ds.items[3])))   # the rows after the bad one moved up


# ---------------------------------------------------------------- a cache up to date is trusted

def test_cache_up_to_date_is_not_decoded_again(subset, tmp_path, monkeypatch):
    "With a cache up to date, check_images decodes nothing (the build did, and recorded the undecodable images)"
    tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False, check_images=True)
    def boom(*a, **k): raise AssertionError('decoded again')
    monkeypatch.setattr(tdata, 'find_bad_images', boom); monkeypatch.setattr(tcache, '_decode', boom)
    dls = tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False, check_images=True)
    assert len(dls.train_ds) == 60


def test_stale_cache_after_rewrite_with_same_size_and_time(subset, tmp_path):
    "An image rewritten with the same size, its modification time put back (cp -p, rsync -a, touch -r): the cache is built again"
    root,files,labels = _split(subset)
    f = files[0]
    im = np.asarray(Image.open(f).convert('RGB'))
    Image.fromarray(im).save(f, format='BMP')   # fixed size for fixed dimensions
    c = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    st = f.stat()
    Image.fromarray(255 - im).save(tmp_path/'neg.bmp')
    shutil.copyfile(tmp_path/'neg.bmp', f); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))   # what touch -r does
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    c2 = build_cache(root, 'valid', files, labels, tmp_path/'c', verbose=False)
    assert np.array_equal(c2.x[0], 255 - im) and not np.array_equal(c2.x[0], c.x[0])


# ---------------------------------------------------------------- a build killed mid-way

_BUILD = '''
import sys, time, PIL.Image
from tiny_fastai.data import scan
from tiny_fastai.cache import build_cache
real = PIL.Image.open
def slow(*a, **k): time.sleep(0.02); return real(*a, **k)
PIL.Image.open = slow
lay = scan(sys.argv[1])
build_cache(lay.path, 'train', [f for f,_ in lay.train], [lay.wnids.index(w) for _,w in lay.train], sys.argv[2], n_workers=2)
'''

@pytest.mark.parametrize('sig', ['SIGKILL', 'SIGTERM'])
def test_killed_build_leaves_no_workers_and_no_lock(tmp_path, sig):
    "A build killed while its workers decode: they die with it (none holds the lock), and the next build finishes"
    p = subprocess.Popen([sys.executable, '-c', _BUILD, str(SAMPLE), str(tmp_path/'c')], stdout=subprocess.PIPE, text=True)
    try:
        assert 'decoding 1,000 train images' in p.stdout.readline()
        kids = []
        for _ in range(100):
            kids = psutil.Process(p.pid).children(recursive=True)
            if len(kids) >= 2: break
            time.sleep(0.1)
        assert len(kids) >= 2
        time.sleep(0.5)
        p.send_signal(getattr(__import__('signal'), sig)); p.wait(10)
        _,alive = psutil.wait_procs(kids, timeout=5)
        assert not alive, f"{len(alive)} decoding process(es) outlived the build"
    finally:
        p.kill(); p.wait(); p.stdout.close()
        for k in locals().get('kids', []):   # on failure: none left running
            try: k.kill()
            except psutil.Error: pass
    r = subprocess.run([sys.executable, '-c', _BUILD.replace('time.sleep(0.02); ', ''), str(SAMPLE), str(tmp_path/'c')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'train cache built' in r.stdout, r.stderr
    assert not list((tmp_path/'c').glob('.*.tmp'))   # the killed build's temporary files are gone


# ---------------------------------------------------------------- where the cache goes

@pytest.mark.parametrize('value', ['', 'relative/cache'])
def test_empty_or_relative_xdg_cache_home_ignored(monkeypatch, value, tmp_path):
    monkeypatch.setenv('XDG_CACHE_HOME', value); monkeypatch.chdir(tmp_path)
    d = default_cache_dir(SAMPLE)
    assert d.is_absolute() and Path.home()/'.cache'/'tiny_fastai' in d.parents
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'x'))
    assert tmp_path/'x'/'tiny_fastai' in default_cache_dir(SAMPLE).parents


def test_unwritable_cache_folder_named(monkeypatch, tmp_path):
    "An unwritable HOME (the cache folder of read-only data) is one error naming the image cache and how to move it"
    home = tmp_path/'home'
    monkeypatch.setenv('HOME', str(home)); monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    real = pathlib.Path.mkdir
    def mkdir(self, *a, **k):
        if str(self).startswith(str(home)): raise PermissionError(13, 'Permission denied', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, 'mkdir', mkdir)
    with pytest.raises(PermissionError, match=r'cannot write the image cache in .*home.*cache_dir=.*XDG_CACHE_HOME'):
        tiny_dls(SAMPLE, num_workers=0, cache=True, verbose=False)


# ---------------------------------------------------------------- names that are not UTF-8

@pytest.mark.skipif(sys.platform == 'win32' or sys.getfilesystemencoding() != 'utf-8', reason='POSIX byte names')
def test_file_name_not_utf8(subset, tmp_path):
    f = sorted((subset/'train').glob('*/images/*.JPEG'))[2]
    odd = os.fsencode(f.parent) + b'/odd_\xff\xfe.JPEG'
    os.rename(os.fsencode(f), odd)
    dls = tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    assert os.fsdecode(odd) in [str(o) for o in dls.train_ds.items] and len(dls.train_ds) == 60
    assert data_id(dls).startswith('3 classes ') and 'train: 60 images, files ' in data_id(dls)
    with open(odd, 'wb') as g: g.write(b'not a jpeg')
    with pytest.raises(LayoutError, match=r'cannot decode image .*odd_\\xff\\xfe\.JPEG'):
        tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    with pytest.warns(UserWarning, match=r'skipped 1 undecodable image\(s\): .*odd_\\xff\\xfe\.JPEG'):
        dls = tiny_dls(subset, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False, skip_bad=True)
    assert len(dls.train_ds) == 59 and 'train: 59 images, files ' in data_id(dls)
    with pytest.warns(UserWarning, match=r'odd_\\xff\\xfe\.JPEG'):   # the files path too
        dls = tiny_dls(subset, num_workers=0, skip_bad=True)
    assert 'train: 59 images, files ' in data_id(dls)   # without a cache: the files' own key
