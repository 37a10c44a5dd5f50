"""Tests of tiny_fastai.data: layout checks and their errors, archives and downloads, the loaders and progressive resizing.
Most run on the bundled sample; the full-dataset tests run when TINY_IMAGENET names the official archive or folder."""
import http.server, os, shutil, subprocess, sys, tarfile, threading, warnings, zipfile
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from fastai.vision.all import TfmdDL, DataLoaders
import tiny_fastai.data as tdata
from tiny_fastai.data import (URL_TINY, LayoutError, ArchiveError, DownloadError, check_layout, class_names, get_tiny_imagenet,
                              make_subset, sample_path, tiny_dls, resize_dls, BatchResize, TINY_STATS)

SAMPLE = sample_path()


@pytest.fixture
def copy(tmp_path):
    "A writable copy of the bundled sample"
    dst = tmp_path/'tiny-imagenet-200'
    shutil.copytree(SAMPLE, dst)
    return dst


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


# ---------------------------------------------------------------- the bundled sample

def test_sample_layout():
    r = check_layout(SAMPLE)
    assert (r['n_classes'], r['n_train'], r['n_valid'], r['bad']) == (10, 1000, 500, [])
    for f in ['wnids.txt', 'words.txt', 'val/val_annotations.txt']: assert (SAMPLE/f).is_file()
    wnids = (SAMPLE/'wnids.txt').read_text().split()
    assert all((SAMPLE/'train'/w/f'{w}_boxes.txt').is_file() for w in wnids)
    size = sum(f.stat().st_size for f in SAMPLE.rglob('*') if f.is_file())
    assert size <= 4_000_000, size
    assert get_tiny_imagenet(SAMPLE) == SAMPLE


def test_class_names_readable_and_unique(copy):
    names = class_names(SAMPLE)
    assert len(names) == 10 and len(set(names.values())) == 10
    assert all(not n.startswith('n0') for n in names.values())
    w = sorted(names)
    # a words.txt with a repeated first synonym gets the wnid appended
    (copy/'words.txt').write_text(f'{w[0]}\tcrane, bird\n{w[1]}\tcrane, machine\n')
    n2 = class_names(copy)
    assert n2[w[0]] == f'crane ({w[0]})' and n2[w[1]] == f'crane ({w[1]})' and n2[w[2]] == w[2]


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
        for dl in (d.train, d.valid):
            xb, yb = dl.one_batch()
            assert xb.shape == (16, 3, *hw) and yb.shape == (16,)
    # the original loaders are unchanged
    assert dls.one_batch()[0].shape[-1] == 64
    # chained resizes replace the size instead of adding transforms
    d2 = resize_dls(resize_dls(dls, 16), 32)
    assert sum(isinstance(f, BatchResize) for f in d2.train.after_batch.fs) == 1


def test_resize_dls_does_not_reread_folder(monkeypatch):
    dls = tiny_dls(SAMPLE, bs=8, num_workers=0)
    def boom(*a, **k): raise AssertionError('folder read again')
    monkeypatch.setattr(tdata, '_scan', boom); monkeypatch.setattr(tdata.os, 'scandir', boom)
    assert resize_dls(dls, 32).one_batch()[0].shape == (8, 3, 32, 32)


def test_resize_dls_keeps_loader_class():
    class MyDL(TfmdDL): pass
    dls = tiny_dls(SAMPLE, bs=8, num_workers=0, dl_type=MyDL)
    d = resize_dls(dls, 16)
    assert all(type(dl) is MyDL for dl in d.loaders)
    assert d.valid.one_batch()[0].shape == (8, 3, 16, 16)


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


# ---------------------------------------------------------------- bad layouts: one clear error naming what is wrong

def test_missing_path(tmp_path):
    for f in (check_layout, tiny_dls, get_tiny_imagenet):
        with pytest.raises(LayoutError, match='does not exist'): f(tmp_path/'nope')


def test_not_tiny_imagenet(tmp_path):
    (tmp_path/'stuff').mkdir(); (tmp_path/'stuff'/'a.txt').write_text('hi')
    with pytest.raises(LayoutError, match='not a Tiny ImageNet folder: wnids.txt is missing'): tiny_dls(tmp_path/'stuff')
    with pytest.raises(LayoutError, match='is not a folder'): check_layout(tmp_path/'stuff'/'a.txt')
    with pytest.raises(LayoutError, match='neither a folder nor'): get_tiny_imagenet(tmp_path/'stuff'/'a.txt')


def test_parent_folder_hint(tmp_path, copy):
    with pytest.raises(LayoutError, match='did you mean'): check_layout(copy.parent)
    assert get_tiny_imagenet(copy.parent) == copy


def test_missing_class_folder(copy):
    w = sorted(class_names(copy))[3]
    shutil.rmtree(copy/'train'/w)
    with pytest.raises(LayoutError, match=f'class folder train/{w}/images is missing'): tiny_dls(copy)


def test_missing_val_annotations(copy):
    (copy/'val'/'val_annotations.txt').unlink()
    with pytest.raises(LayoutError, match='val/val_annotations.txt is missing'): check_layout(copy)


def test_annotation_names_missing_file(copy):
    f = sorted((copy/'val'/'images').iterdir())[0]
    f.unlink()
    with pytest.raises(LayoutError, match=f'names val/images/{f.name}, which does not exist'): tiny_dls(copy)


def test_annotation_unknown_class(copy):
    ann = copy/'val'/'val_annotations.txt'
    lines = ann.read_text().splitlines()
    lines[0] = '\t'.join([lines[0].split('\t')[0], 'n99999999'] + lines[0].split('\t')[2:])
    ann.write_text('\n'.join(lines) + '\n')
    with pytest.raises(LayoutError, match='class n99999999 of .* is not in wnids.txt'): tiny_dls(copy)


def test_all_problems_listed_at_once(copy):
    ws = sorted(class_names(copy))
    shutil.rmtree(copy/'train'/ws[0]); shutil.rmtree(copy/'train'/ws[1]); (copy/'val'/'val_annotations.txt').unlink()
    with pytest.raises(LayoutError) as e: check_layout(copy)
    assert len(e.value.problems) == 3
    for w in ws[:2]: assert w in str(e.value)


def test_full_demands_official_counts():
    with pytest.raises(LayoutError, match='lists 10 classes, expected 200'): check_layout(SAMPLE, full=True)


def test_undecodable_image(copy):
    bad = sorted((copy/'train').glob('*/images/*.JPEG'))[5]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    junk = sorted((copy/'val'/'images').iterdir())[7]
    junk.write_bytes(b'this is not an image')
    with pytest.raises(LayoutError) as e: check_layout(copy, check_images=True)
    msg = str(e.value)
    assert '2 image(s) cannot be decoded' in msg and bad.name in msg and junk.name in msg and 'skip_bad' in msg
    assert sorted(e.value.bad) == sorted([bad, junk])
    with pytest.raises(LayoutError, match='cannot be decoded'): tiny_dls(copy, check_images=True)
    with pytest.warns(UserWarning, match='skipped 2 undecodable'): dls = tiny_dls(copy, skip_bad=True, num_workers=0)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (999, 499) and sorted(dls.bad_files) == sorted([bad, junk])
    assert check_layout(copy, check_images=True, skip_bad=True)['n_train'] == 999
    # without the check, loading the file fails with a message naming it
    dls = tiny_dls(copy, num_workers=0, aug=None)
    i = list(dls.train_ds.items).index(bad)
    with pytest.raises(LayoutError, match=f'cannot decode image .*{bad.name}'): dls.train_ds[i]


# ---------------------------------------------------------------- archives and downloads

def _zip(folder, dest):
    with zipfile.ZipFile(dest, 'w') as z:
        for f in sorted(folder.rglob('*')): z.write(f, Path('tiny-imagenet-200')/f.relative_to(folder))
    return dest


def _targz(folder, dest):
    with tarfile.open(dest, 'w:gz') as t: t.add(folder, arcname='tiny-imagenet-200')
    return dest


@pytest.fixture(scope='module')
def archives(tmp_path_factory):
    "The bundled sample as .zip and .tar.gz archives (made once per module)"
    d = tmp_path_factory.mktemp('archives')
    return {'zip': _zip(SAMPLE, d/'tiny.zip'), 'tar.gz': _targz(SAMPLE, d/'tiny.tar.gz')}


def _leftovers(d): return [p.name for p in Path(d).iterdir()] if Path(d).exists() else []


@pytest.mark.parametrize('fmt', ['zip', 'tar.gz', 'tgz'])
def test_archive_extracted_and_cached(tmp_path, fmt, monkeypatch, archives):
    arch = tmp_path/f'tiny.{fmt}'
    shutil.copy(archives['zip' if fmt == 'zip' else 'tar.gz'], arch)
    p = get_tiny_imagenet(arch, dest=tmp_path/'data')
    assert p == tmp_path/'data'/'tiny-imagenet-200' and check_layout(p)['n_train'] == 1000
    assert _leftovers(tmp_path/'data') == ['tiny-imagenet-200']
    monkeypatch.setattr(tdata, '_unpack', lambda *a: pytest.fail('extracted twice'))
    assert get_tiny_imagenet(arch, dest=tmp_path/'data') == p


@pytest.mark.parametrize('fmt', ['zip', 'tar.gz'])
def test_truncated_archive(tmp_path, fmt, archives):
    good = archives[fmt]
    bad = tmp_path/f'bad.{fmt}'
    bad.write_bytes(good.read_bytes()[:good.stat().st_size*2//3])
    with pytest.raises(ArchiveError, match=f'{bad.name} is truncated or corrupt'): get_tiny_imagenet(bad, dest=tmp_path/'data')
    assert _leftovers(tmp_path/'data') == []  # the half extraction is gone ...
    assert get_tiny_imagenet(good, dest=tmp_path/'data') == tmp_path/'data'/'tiny-imagenet-200'  # ... and not reused


def test_corrupt_zip_member(tmp_path, archives):
    good = archives['zip']
    data = bytearray(good.read_bytes())
    i = data.index(b'JFIF') + 200  # inside the first stored JPEG: the CRC no longer matches
    data[i:i+8] = b'XXXXXXXX'
    bad = tmp_path/'bad.zip'; bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match='truncated or corrupt'): get_tiny_imagenet(bad, dest=tmp_path/'data')
    assert _leftovers(tmp_path/'data') == []


def test_archive_without_tiny_imagenet(tmp_path):
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'a.txt').write_text('hi')
    arch = tmp_path/'x.zip'
    with zipfile.ZipFile(arch, 'w') as z: z.write(tmp_path/'x'/'a.txt', 'x/a.txt')
    with pytest.raises(LayoutError, match='does not contain Tiny ImageNet'): get_tiny_imagenet(arch, dest=tmp_path/'data')
    assert _leftovers(tmp_path/'data') == []


def test_killed_extraction_is_cleaned(tmp_path, archives):
    "A temporary folder left by a killed extraction is removed, and never taken as the data"
    data = tmp_path/'data'; data.mkdir()
    p = subprocess.Popen([sys.executable, '-c', 'pass']); p.wait()  # a pid that is gone
    stale = data/f'.tiny-imagenet-200.partial-{p.pid}-abc'
    shutil.copytree(SAMPLE/'train', stale/'tiny-imagenet-200'/'train')
    shutil.copy(SAMPLE/'wnids.txt', stale/'tiny-imagenet-200')
    assert get_tiny_imagenet(archives['tar.gz'], dest=data) == data/'tiny-imagenet-200'
    assert _leftovers(data) == ['tiny-imagenet-200']


def test_existing_broken_folder_not_reused(tmp_path, archives):
    data = tmp_path/'data'; (data/'tiny-imagenet-200'/'train').mkdir(parents=True)
    with pytest.raises(LayoutError, match='exists but is not a valid extraction.*delete it'): get_tiny_imagenet(archives['tar.gz'], dest=data)


class _Handler(http.server.BaseHTTPRequestHandler):
    payload, lie = b'', False
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Length', str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[:len(self.payload)//3] if self.lie else self.payload)
    def log_message(self, *a): pass


@pytest.fixture
def server(tmp_path):
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    yield srv
    srv.shutdown(); srv.server_close()


def test_download(tmp_path, server, archives):
    _Handler.payload, _Handler.lie = archives['zip'].read_bytes(), False
    url = f'http://127.0.0.1:{server.server_port}/tiny-imagenet-200.zip'
    p = get_tiny_imagenet(url, dest=tmp_path/'data', archive=tmp_path/'arch')
    assert check_layout(p)['n_valid'] == 500 and _leftovers(tmp_path/'arch') == ['tiny-imagenet-200.zip']


def test_interrupted_download(tmp_path, server, archives):
    _Handler.payload, _Handler.lie = archives['zip'].read_bytes(), True
    url = f'http://127.0.0.1:{server.server_port}/tiny-imagenet-200.zip'
    with pytest.raises(DownloadError, match='did not finish'): get_tiny_imagenet(url, dest=tmp_path/'data', archive=tmp_path/'arch')
    assert _leftovers(tmp_path/'arch') == [] and _leftovers(tmp_path/'data') == []
    _Handler.lie = False  # the next run downloads it again
    assert get_tiny_imagenet(url, dest=tmp_path/'data', archive=tmp_path/'arch') == tmp_path/'data'/'tiny-imagenet-200'


def test_corrupt_download_is_deleted(tmp_path, server):
    _Handler.payload, _Handler.lie = b'<html>not an archive</html>', False
    url = f'http://127.0.0.1:{server.server_port}/tiny-imagenet-200.zip'
    with pytest.raises(ArchiveError, match='downloaded file was deleted'): get_tiny_imagenet(url, dest=tmp_path/'data', archive=tmp_path/'arch')
    assert _leftovers(tmp_path/'arch') == [] and _leftovers(tmp_path/'data') == []


def test_default_url():
    assert URL_TINY == 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'


# ---------------------------------------------------------------- make_subset

def test_make_subset(tmp_path):
    d = make_subset(SAMPLE, tmp_path/'sub', n_classes=3, n_train=7, n_val=4, seed=1)
    r = check_layout(d)
    assert (r['n_classes'], r['n_train'], r['n_valid']) == (3, 21, 12)
    wnids = (d/'wnids.txt').read_text().split()
    assert len((d/'words.txt').read_text().splitlines()) == 3
    for w in wnids: assert len((d/'train'/w/f'{w}_boxes.txt').read_text().splitlines()) == 7
    ann = _annotations(d)
    assert set(ann.values()) == set(wnids) and all(ann[f] == _annotations(SAMPLE)[f] for f in ann)
    with pytest.raises(FileExistsError): make_subset(SAMPLE, d)
    with pytest.raises(ValueError, match='n_train'): make_subset(SAMPLE, tmp_path/'x', n_train=101)
    assert not (tmp_path/'x').exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


# ---------------------------------------------------------------- the full dataset (TINY_IMAGENET)

@pytest.fixture(scope='session')
def full_path(tmp_path_factory):
    src = os.environ.get('TINY_IMAGENET')
    if not src: pytest.skip('set TINY_IMAGENET to the Tiny ImageNet archive or folder to run the full-dataset tests')
    if Path(src).is_dir(): return get_tiny_imagenet(src)
    return get_tiny_imagenet(src, dest=tmp_path_factory.mktemp('full'))


def test_full_layout(full_path):
    r = check_layout(full_path, full=True)
    assert (r['n_classes'], r['n_train'], r['n_valid']) == (200, 100_000, 10_000)


def test_full_dls(full_path):
    dls = tiny_dls(full_path, bs=64, num_workers=0)
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c, len(set(dls.vocab))) == (100_000, 10_000, 200, 200)
    assert 'goldfish' in dls.vocab
    _check_val_labels(dls, full_path)
    for sz in (16, 32, 64):
        d = resize_dls(dls, sz)
        for dl in (d.train, d.valid):
            xb, yb = dl.one_batch()
            assert xb.shape == (64, 3, sz, sz) and yb.shape == (64,)
