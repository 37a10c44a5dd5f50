"""Tests of tiny_fastai.data: reading the layout (`scan`), layout checks and their errors, undecodable images, archives
and downloads, `make_subset`. Most run on the bundled sample; the full-dataset test runs when TINY_IMAGENET names the
official archive or folder (the `full_path` fixture of conftest.py)."""
import http.server, shutil, subprocess, sys, tarfile, threading, zipfile
from pathlib import Path
import pytest
from PIL import Image
import tiny_fastai.data as tdata, tiny_fastai.archive as tarchive
from tiny_fastai.data import LayoutError, ArchiveError, DownloadError, Layout, scan, check_layout, class_names, make_subset, sample_path, open_image
from tiny_fastai.archive import get_tiny_imagenet

SAMPLE = sample_path()




def _annotations(path):
    return dict(l.split('\t')[:2] for l in (Path(path)/'val'/'val_annotations.txt').read_text().splitlines() if l.strip())


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


def test_scan():
    lay = scan(SAMPLE)
    assert isinstance(lay, Layout) and lay.path == SAMPLE and lay.bad == []
    assert lay.wnids == (SAMPLE/'wnids.txt').read_text().split() and lay.names == class_names(SAMPLE)
    assert (len(lay.train), len(lay.valid)) == (1000, 500)
    # train: class by class, file names sorted; valid: in val_annotations.txt order, labelled from it
    assert lay.train == [(SAMPLE/'train'/w/'images'/f.name, w) for w in lay.wnids
                         for f in sorted((SAMPLE/'train'/w/'images').iterdir(), key=lambda f: f.name)]
    ann = _annotations(SAMPLE)
    assert [f.name for f, _ in lay.valid] == list(ann) and all(ann[f.name] == w for f, w in lay.valid)
    assert repr(lay).endswith(': 10 classes, 1000 train, 500 valid, 0 bad)')


# ---------------------------------------------------------------- bad layouts: one clear error naming what is wrong

def test_missing_path(tmp_path):
    for f in (check_layout, scan, get_tiny_imagenet):
        with pytest.raises(LayoutError, match='does not exist'): f(tmp_path/'nope')


def test_not_tiny_imagenet(tmp_path):
    (tmp_path/'stuff').mkdir(); (tmp_path/'stuff'/'a.txt').write_text('hi')
    with pytest.raises(LayoutError, match='not a Tiny ImageNet folder: wnids.txt is missing'): scan(tmp_path/'stuff')
    with pytest.raises(LayoutError, match='is not a folder'): check_layout(tmp_path/'stuff'/'a.txt')
    with pytest.raises(LayoutError, match='neither a folder nor'): get_tiny_imagenet(tmp_path/'stuff'/'a.txt')


def test_parent_folder_hint(tmp_path, copy):
    with pytest.raises(LayoutError, match='did you mean'): check_layout(copy.parent)
    assert get_tiny_imagenet(copy.parent) == copy


def test_missing_class_folder(copy):
    w = sorted(class_names(copy))[3]
    shutil.rmtree(copy/'train'/w)
    with pytest.raises(LayoutError, match=f'class folder train/{w}/images is missing'): scan(copy)


def test_missing_val_annotations(copy):
    (copy/'val'/'val_annotations.txt').unlink()
    with pytest.raises(LayoutError, match='val/val_annotations.txt is missing'): check_layout(copy)


def test_annotation_names_missing_file(copy):
    f = sorted((copy/'val'/'images').iterdir())[0]
    f.unlink()
    with pytest.raises(LayoutError, match=f'names val/images/{f.name}, which does not exist'): scan(copy)


def test_annotation_unknown_class(copy):
    ann = copy/'val'/'val_annotations.txt'
    lines = ann.read_text().splitlines()
    lines[0] = '\t'.join([lines[0].split('\t')[0], 'n99999999'] + lines[0].split('\t')[2:])
    ann.write_text('\n'.join(lines) + '\n')
    with pytest.raises(LayoutError, match='class n99999999 of .* is not in wnids.txt'): scan(copy)


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
    with pytest.raises(LayoutError, match='cannot be decoded'): scan(copy, check_images=True)
    lay = scan(copy, skip_bad=True)   # implies check_images
    assert (len(lay.train), len(lay.valid)) == (999, 499) and sorted(lay.bad) == sorted([bad, junk])
    assert bad not in [f for f, _ in lay.train] and junk not in [f for f, _ in lay.valid]
    assert check_layout(copy, check_images=True, skip_bad=True)['n_train'] == 999
    # without the check, opening the file fails with a message naming it
    with pytest.raises(LayoutError, match=f'cannot decode image .*{bad.name}') as e: open_image(bad)
    assert e.value.bad == [bad]


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
    monkeypatch.setattr(tarchive, '_unpack', lambda *a: pytest.fail('extracted twice'))
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

def test_full_layout(full_path):
    r = check_layout(full_path, full=True)
    assert (r['n_classes'], r['n_train'], r['n_valid']) == (200, 100_000, 10_000)


# ---------------------------------------------------------------- nothing silently wrong (issue 11)

def test_second_archive_is_not_served_the_first_ones_data(tmp_path):
    "Two archives extracted to the same place: each call returns its own archive's data; the same archive is not re-extracted"
    three = _targz(make_subset(SAMPLE, tmp_path/'s3'/'tiny-imagenet-200', n_classes=3, n_train=5, n_val=2), tmp_path/'three.tar.gz')
    five = _targz(make_subset(SAMPLE, tmp_path/'s5'/'tiny-imagenet-200', n_classes=5, n_train=5, n_val=2), tmp_path/'five.tar.gz')
    data = tmp_path/'data'
    assert len(scan(get_tiny_imagenet(three, dest=data)).wnids) == 3
    p = get_tiny_imagenet(five, dest=data)
    assert len(scan(p).wnids) == 5 and tdata.extracted_from(p)['archive'] == str(five.resolve())
    assert _leftovers(data) == ['tiny-imagenet-200']            # the other archive's folder is gone, no temp left
    t = (p/'wnids.txt').stat().st_mtime_ns
    assert get_tiny_imagenet(five, dest=data) == p and (p/'wnids.txt').stat().st_mtime_ns == t
    assert len(scan(get_tiny_imagenet(three, dest=data)).wnids) == 3

def test_empty_val_set_refused(copy):
    (copy/'val'/'val_annotations.txt').write_text('')
    for f in (copy/'val'/'images').iterdir(): f.unlink()
    with pytest.raises(LayoutError, match='the val set is empty'): scan(copy)

def test_text_files_from_other_editors(copy):
    "wnids.txt, words.txt and val_annotations.txt with a BOM and Windows line ends (or UTF-16) read the same"
    names = class_names(copy)
    for f,enc in (('wnids.txt', 'utf-8-sig'), ('words.txt', 'utf-16'), ('val/val_annotations.txt', 'utf-8-sig')):
        t = (copy/f).read_text()
        (copy/f).write_bytes(t.replace('\n', '\r\n').encode(enc))
    assert class_names(copy) == names and len(scan(copy).valid) == 500
    (copy/'wnids.txt').write_bytes(b'\x81\x8d\x8f\x90 not text')
    with pytest.raises(LayoutError, match=r'wnids.txt is not a text file'): scan(copy)

def test_images_read_as_a_person_sees_them(tmp_path):
    "16-bit greyscale, transparency, palettes with a transparent colour and EXIF rotation come out as they look"
    import numpy as np
    from tiny_fastai.data import to_rgb
    g16 = tmp_path/'g16.png'; Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(g16)
    assert abs(np.asarray(open_image(g16)).mean() - 128) < 2                 # mid-grey, not white
    rgba = tmp_path/'t.png'; Image.new('RGBA', (8, 8), (0, 0, 0, 0)).save(rgba)
    assert np.asarray(open_image(rgba)).min() == 255                       # transparent is white, not black
    p = Image.new('P', (8, 8), 0); p.putpalette([0, 0, 0]*256); p.info['transparency'] = 0
    assert np.asarray(to_rgb(p)).min() == 255
    im = Image.new('RGB', (20, 10), (255, 0, 0)); ex = im.getexif(); ex[0x0112] = 6      # "rotate 90 degrees" in EXIF
    f = tmp_path/'rot.jpg'; im.save(f, exif=ex)
    assert open_image(f).size == (10, 20)


def test_image_above_the_decompression_bomb_limit(copy, monkeypatch):
    "An image larger than PIL's decompression-bomb limit: an error naming the file and the limit, not 'cannot decode'"
    import PIL.Image
    f = sorted((copy/'train').glob('*/images/*.JPEG'))[0]
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 1000)   # a 64x64 image is then more than twice the limit
    with pytest.raises(LayoutError) as e: open_image(f)
    msg = str(e.value)
    assert msg.startswith(f"image {f} is larger than PIL's decompression-bomb limit (") and 'PIL.Image.MAX_IMAGE_PIXELS' in msg, msg
    assert '--skip-bad' in msg and e.value.bad == [f]
