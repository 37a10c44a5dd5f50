"""Archives, images and folders from strangers (issue 23): archive members checked before they are read (too large, too
many bytes in all, outside the folder) also when the archive is extracted in the background; an archive rewritten
while it is read keeps nothing; a full disk says so and keeps the download; the data fingerprint of a resume follows
the images' content; the cache folder's errors are one line naming --cache-dir; images that claim a huge size are refused
before they are decoded; evaluate names an undecodable val image in one line."""
import errno, io, json, os, pathlib, shutil, struct, tarfile, warnings, zipfile, zlib
from pathlib import Path
import numpy as np, pytest
from PIL import Image
import tiny_fastai.data as tdata, tiny_fastai.archive as tarchive, tiny_fastai.cache as tcache, tiny_fastai.files as tfiles
from tiny_fastai.data import LayoutError, ArchiveError, make_subset, sample_path, open_image
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.recipe import data_id

SAMPLE = sample_path()


@pytest.fixture
def sub(tmp_path): return make_subset(SAMPLE, tmp_path/'sub', n_classes=2, n_train=4, n_val=2)


def _tar(folder, dest, extra=()):
    "`folder` as tiny-imagenet-200/ in the .tar.gz `dest`, then the (TarInfo, bytes) of `extra`"
    with tarfile.open(dest, 'w:gz') as t:
        t.add(folder, 'tiny-imagenet-200')
        for info,b in extra: t.addfile(info, io.BytesIO(b) if b is not None else None)
    return dest


def _zip(folder, dest, extra=()):
    with zipfile.ZipFile(dest, 'w') as z:
        for p in sorted(Path(folder).rglob('*')): z.write(p, 'tiny-imagenet-200/' + str(p.relative_to(folder)))
        for n,b in extra: z.writestr(n, b)
    return dest


def _member(name, b): i = tarfile.TarInfo(name); i.size = len(b); return i, b


def _one_line(e, *has):
    s = str(e)
    assert '\n' not in s and all(h in s for h in has), s


# ---------------------------------------------------------------- bad 2: members read whole, no cap

def test_member_claiming_gigabytes_refused_before_it_is_read(sub, tmp_path):
    "A tar member whose header claims 3 GB is refused by name before any of it is read (main read it whole: 6.8 GB of memory)"
    info = tarfile.TarInfo('tiny-imagenet-200/train/big.JPEG'); info.size = 3*2**30   # its bytes are not even there
    arch = tmp_path/'big.tar'
    with tarfile.open(arch, 'w') as t:
        t.add(sub, 'tiny-imagenet-200')
        t.fileobj.write(info.tobuf(t.format, t.encoding, t.errors))   # the header alone
    for f in (lambda: list(tarchive.archive_members(arch)), lambda: get_tiny_imagenet(arch, dest=tmp_path/'d')):
        with pytest.raises(ArchiveError) as e: f()
        _one_line(e.value, str(arch), "'tiny-imagenet-200/train/big.JPEG'", '3.2 GB', 'MAX_MEMBER_BYTES', 'before reading')
    assert not list((tmp_path/'d').glob('*tiny-imagenet-200*'))


@pytest.mark.parametrize('kind', ['tar.gz', 'zip'])
def test_members_above_the_caps_refused_in_the_cache_and_the_extraction(sub, tmp_path, monkeypatch, kind):
    "A member above MAX_MEMBER_BYTES, and an unpacked total above MAX_ARCHIVE_BYTES (both lowered here), are refused by name, also on the training path"
    blob = os.urandom(60_000)
    arch = (_tar(sub, tmp_path/'a.tar.gz', [_member('tiny-imagenet-200/junk.bin', blob)]) if kind == 'tar.gz' else
            _zip(sub, tmp_path/'a.zip', [('tiny-imagenet-200/junk.bin', blob)]))
    monkeypatch.setattr(tarchive, 'MAX_MEMBER_BYTES', 50_000, raising=False)
    with pytest.raises(ArchiveError) as e: get_tiny_imagenet(arch, dest=tmp_path/'d')
    _one_line(e.value, "'tiny-imagenet-200/junk.bin'", 'MAX_MEMBER_BYTES')
    p = get_tiny_imagenet(arch, dest=tmp_path/'d2', background=True)
    with pytest.raises(ArchiveError) as e: tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    _one_line(e.value, "'tiny-imagenet-200/junk.bin'", 'MAX_MEMBER_BYTES')
    monkeypatch.setattr(tarchive, 'MAX_MEMBER_BYTES', 2**26)
    monkeypatch.setattr(tarchive, 'MAX_ARCHIVE_BYTES', 40_000, raising=False)
    with pytest.raises(ArchiveError) as e: list(tarchive.archive_members(arch))
    _one_line(e.value, str(arch), 'unpacks to more than', 'MAX_ARCHIVE_BYTES')


# ---------------------------------------------------------------- poor: hostile archives fail before training

def test_unsafe_member_fails_before_training_when_extracted_in_the_background(sub, tmp_path):
    "A member outside the folder fails when the cache reads the archive, before training (main: after the whole training, in the extraction)"
    arch = _tar(sub, tmp_path/'evil.tar.gz', [_member('../evil.txt', b'evil')])
    p = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    with pytest.raises(ArchiveError) as e: tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    _one_line(e.value, str(arch), 'unsafe member')
    assert not (tmp_path/'evil.txt').exists()


def test_full_disk_of_the_background_extraction_fails_before_training(sub, tmp_path, monkeypatch):
    "An extraction that will not fit fails before the loaders are returned, saying the disk is full and where (not 'truncated or corrupt')"
    arch = _tar(sub, tmp_path/'s.tar.gz')
    monkeypatch.setattr(tarchive, 'free_space', lambda p: 1000, raising=False)   # the disk of the extraction, not the cache's
    monkeypatch.setattr(tarfile.TarFile, 'extractall', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device')))
    p = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    with pytest.raises(OSError) as e: tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    _one_line(e.value, 'no space left on device', str(arch), str(tmp_path/'d'), 'is kept')
    assert 'corrupt' not in str(e.value) and e.value.errno == errno.ENOSPC and arch.exists()


# ---------------------------------------------------------------- bad 6: a full disk deletes a good download

def test_full_disk_keeps_the_download(sub, tmp_path, monkeypatch):
    "No space while extracting a downloaded archive: says the disk is full (where, how much) and keeps the download"
    got = tmp_path/'arch'/'tiny-imagenet-200.tar.gz'; got.parent.mkdir()
    _tar(sub, got)   # downloaded before
    url = 'http://127.0.0.1:9/tiny-imagenet-200.tar.gz'   # not fetched: the archive is there
    monkeypatch.setattr(tarfile.TarFile, 'extractall', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device')))
    for _ in range(2):   # each retry finds it again
        with pytest.raises(OSError) as e: get_tiny_imagenet(url, dest=tmp_path/'d', archive=tmp_path/'arch')
        _one_line(e.value, 'no space left on device', str(got), str(tmp_path/'d'), 'free')
        assert 'corrupt' not in str(e.value) and 'deleted' not in str(e.value) and got.exists()
    monkeypatch.setattr(tarchive, 'free_space', lambda p: 10, raising=False)   # found before extracting: how much it needs
    with pytest.raises(OSError) as e: get_tiny_imagenet(url, dest=tmp_path/'d', archive=tmp_path/'arch')
    _one_line(e.value, 'no space left on device', 'needs', '10 bytes free')
    assert got.exists() and not list((tmp_path/'d').glob('.tiny-imagenet-200.partial-*'))


def test_full_disk_while_downloading_says_so(tmp_path, monkeypatch):
    def full(url, dest, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(tarchive, 'download_url', full)
    with pytest.raises(OSError) as e: get_tiny_imagenet('http://127.0.0.1:9/t.zip', dest=tmp_path/'d', archive=tmp_path/'arch')
    _one_line(e.value, 'no space left on device', str(tmp_path/'arch'/'t.zip'), 'free')


# ---------------------------------------------------------------- bad 5: an archive rewritten while it is read

def _other(tmp_path):
    o = make_subset(SAMPLE, tmp_path/'other', n_classes=2, n_train=4, n_val=2, seed=1)
    return o


def test_archive_rewritten_while_the_cache_reads_it_keeps_nothing(sub, tmp_path, monkeypatch):
    "The archive replaced in place during the cache's read: an error, no cache; with the original back, its own images (main trusted a cache of the other's)"
    arch = _tar(sub, tmp_path/'s.tar.gz'); orig = arch.read_bytes()
    other = _tar(_other(tmp_path), tmp_path/'o.tar.gz').read_bytes()
    real = tcache.archive_members
    def swapped(a):
        for i,m in enumerate(real(a)):
            if i == 0:
                with open(arch, 'r+b') as f: f.write(other); f.truncate()   # in place: the same inode
            yield m
    monkeypatch.setattr(tcache, 'archive_members', swapped)
    with pytest.raises(ArchiveError) as e: tcache.archive_caches(arch, tmp_path/'d'/'tiny-imagenet-200', tmp_path/'c', verbose=False)
    _one_line(e.value, str(arch), 'changed while it was read')
    assert not list((tmp_path/'c').glob('layout-*.json'))
    monkeypatch.undo()
    arch.write_bytes(orig)
    lay,cs = tcache.archive_caches(arch, tmp_path/'d'/'tiny-imagenet-200', tmp_path/'c', verbose=False)
    want = tcache.build_cache(sub, 'valid', [sub/f.relative_to(lay.path) for f,_ in lay.valid], cs[1].y, tmp_path/'c2', verbose=False)
    assert np.array_equal(cs[1].x, want.x)


def test_archive_rewritten_while_extracted_keeps_nothing(sub, tmp_path, monkeypatch):
    arch = _tar(sub, tmp_path/'s.tar.gz')
    other = _tar(_other(tmp_path), tmp_path/'o.tar.gz').read_bytes()
    real = tarchive._unpack
    def swapped(a, out, *r):
        real(a, out, *r)
        with open(arch, 'r+b') as f: f.write(other); f.truncate()
    monkeypatch.setattr(tarchive, '_unpack', swapped)
    with pytest.raises(ArchiveError) as e: get_tiny_imagenet(arch, dest=tmp_path/'d')
    _one_line(e.value, str(arch), 'changed while it was extracted')
    assert not (tmp_path/'d'/'tiny-imagenet-200').exists()


# ---------------------------------------------------------------- bad 4: a resume on other images with the same names

def test_data_id_follows_the_images_content(sub, tmp_path):
    "An image replaced by another under the same name changes data_id (main: names only), and the part that changed shows"
    dls = tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    a = data_id(dls)
    assert data_id(tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)) == a   # unchanged: the same id
    fs = sorted((sub/'train').glob('*/images/*.JPEG'))
    shutil.copy(fs[1], fs[0])   # other pixels, the same name
    b = data_id(tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False))
    assert a != b and a.split('; ')[0] == b.split('; ')[0] and a.split('; ')[2] == b.split('; ')[2] and a.split('; ')[1] != b.split('; ')[1], (a, b)
    c = data_id(tiny_dls(sub, num_workers=0, verbose=False))   # without a cache: the files' own key
    shutil.copy(fs[2], fs[0])
    assert data_id(tiny_dls(sub, num_workers=0, verbose=False)) != c


def test_data_id_of_an_archive_names_its_hash(sub, tmp_path):
    arch = _tar(sub, tmp_path/'s.tar.gz')
    p = get_tiny_imagenet(arch, dest=tmp_path/'d', background=True)
    dls = tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    assert f"archive s.tar.gz sha256 {tarchive.file_sha256(arch)[:16]}" in data_id(dls), data_id(dls)
    tdata.wait_extracted(p)


def test_archive_rewritten_in_place_says_it_changed(sub, tmp_path, capsys):
    "The message for an archive rewritten since its extraction: 'changed since', not 'extracted from X, not from X'"
    arch = _tar(sub, tmp_path/'s.tar.gz')
    get_tiny_imagenet(arch, dest=tmp_path/'d'); capsys.readouterr()
    _tar(_other(tmp_path), arch)
    get_tiny_imagenet(arch, dest=tmp_path/'d')
    out = capsys.readouterr().out
    assert f'{arch} changed since' in out and 'not from' not in out, out


def test_resume_on_other_images_refused_naming_what_changed(sub, tmp_path):
    "A run's checkpoint is not resumed on other images with the same names: the refusal shows that the train split changed"
    from tiny_fastai.recipe import train_recipe
    from tiny_fastai.checkpoint import CheckpointError
    kw = dict(out=tmp_path/'run', data=sub, sizes=[16], epochs=[1], lrs=[1e-3], bs=4, num_workers=0, tta=False)
    train_recipe('demo', **kw)
    fs = sorted((sub/'train').glob('*/images/*.JPEG'))
    shutil.copy(fs[1], fs[0])   # other pixels, the same name
    with pytest.raises(CheckpointError) as e: train_recipe('demo', **kw)
    assert 'data: checkpoint has' in str(e.value) and 'train: 8 images, files ' in str(e.value), str(e.value)


# ---------------------------------------------------------------- poor: the cache folder's settings

def test_xdg_cache_home_a_file_is_one_line(monkeypatch, tmp_path):
    "XDG_CACHE_HOME naming a file (the cache of read-only data goes there): one line naming the folder and --cache-dir, not an errno"
    f = tmp_path/'file'; f.write_text('x')
    monkeypatch.setenv('XDG_CACHE_HOME', str(f))
    with pytest.raises(OSError) as e: tiny_dls(SAMPLE, num_workers=0, cache=True, verbose=False)   # the sample: inside the package
    _one_line(e.value, 'cannot write the image cache in', str(f), '--cache-dir (or cache_dir= in Python, or XDG_CACHE_HOME)')
    assert not str(e.value).startswith('[Errno')


def test_read_only_cache_folder_is_one_line(monkeypatch, tmp_path):
    c = tmp_path/'ro'
    real = pathlib.Path.mkdir
    def mkdir(self, *a, **k):
        if str(self).startswith(str(c)): raise OSError(errno.EROFS, 'Read-only file system', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, 'mkdir', mkdir)
    with pytest.raises(OSError) as e: tiny_dls(SAMPLE, num_workers=0, cache=True, cache_dir=c, verbose=False)
    _one_line(e.value, 'cannot write the image cache in', str(c), 'Read-only file system', '--cache-dir')
    assert not str(e.value).startswith('[Errno')


def test_full_cache_disk_names_what_a_cli_user_can_do(sub, tmp_path, monkeypatch):
    monkeypatch.setattr(tfiles, 'free_space', lambda p: 1000)
    with pytest.raises(OSError) as e: tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    _one_line(e.value, 'no space left on device', '--cache-dir (or cache_dir= in Python, or XDG_CACHE_HOME)')


# ---------------------------------------------------------------- poor: small files that decode huge

def _claims(src_png_or_jpeg, w, h, dest):
    "The image file `src` with its header changed to claim `w` x `h` pixels (its pixels not there): a few hundred bytes"
    b = bytearray(Path(src_png_or_jpeg).read_bytes())
    if b[:4] == b'\x89PNG':
        b[16:24] = struct.pack('>II', w, h)
        b[29:33] = struct.pack('>I', zlib.crc32(bytes(b[12:29])))   # the IHDR chunk's CRC
    else:
        i = next(i for i in range(len(b)) if b[i] == 0xFF and b[i+1] in (0xC0, 0xC2))   # the frame header
        b[i+5:i+9] = struct.pack('>HH', h, w)
    Path(dest).write_bytes(bytes(b))
    return Path(dest)


@pytest.fixture
def huge(tmp_path, monkeypatch):
    "A JPEG and a 16-bit PNG of a few hundred bytes claiming 4000 x 4000 px, and the pixel limit lowered below that (main: 50 and 130 MB to decode)"
    monkeypatch.setattr(tdata, 'MAX_PIXELS', 10_000_000, raising=False)
    Image.new('RGB', (8, 8), 'red').save(tmp_path/'s.jpg')
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path/'s.png')
    return [_claims(tmp_path/'s.jpg', 4000, 4000, tmp_path/'huge.jpg'), _claims(tmp_path/'s.png', 4000, 4000, tmp_path/'huge.png')]


def test_images_claiming_a_huge_size_refused_before_decoding(huge, monkeypatch):
    import PIL.Image
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 10_000_000)   # PIL warns at 16 megapixels (its error comes at twice the limit): not printed
    for f in huge:
        assert f.stat().st_size < 1000
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            with pytest.raises(LayoutError) as e: open_image(f)
        _one_line(e.value, str(f), '4000 x 4000 px', 'MAX_PIXELS')
        assert e.value.bad == [f] and not w, [str(o.message) for o in w]
        with Image.open(f) as im:
            with pytest.raises(LayoutError): tdata.check_image_size(im, f)


def test_default_pixel_limit(tmp_path):
    "At the default limit: a 700-byte JPEG claiming 9000 x 9000 px (main decoded it: 243 MB) is refused, a 4000 x 3000 photo's size is not"
    Image.new('RGB', (8, 8), 'red').save(tmp_path/'s.jpg')
    f = _claims(tmp_path/'s.jpg', 9000, 9000, tmp_path/'huge.jpg')
    with pytest.raises(LayoutError) as e: open_image(f)
    _one_line(e.value, str(f), '9000 x 9000 px', 'above the limit of 64 megapixels')
    with Image.open(_claims(tmp_path/'s.jpg', 4000, 3000, tmp_path/'photo.jpg')) as im: tdata.check_image_size(im)


def test_huge_image_in_the_training_data_is_named(sub, huge, tmp_path):
    "In the training path (the cache decoding files, or an archive's bytes) such an image is an undecodable one, named, and skip_bad leaves it out"
    shutil.copy(huge[0], sorted((sub/'train').glob('*/images/*.JPEG'))[0])
    with pytest.raises(LayoutError) as e: tiny_dls(sub, num_workers=0, cache=True, cache_dir=tmp_path/'c', verbose=False)
    _one_line(e.value, '4000 x 4000 px', '--skip-bad')
    p = get_tiny_imagenet(_tar(sub, tmp_path/'s.tar.gz'), dest=tmp_path/'d', background=True)
    with pytest.raises(LayoutError) as e: tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c2', verbose=False)
    _one_line(e.value, '4000 x 4000 px')
    with pytest.warns(UserWarning, match='skipped 1 undecodable'):
        dls = tiny_dls(p, num_workers=0, cache=True, cache_dir=tmp_path/'c2', verbose=False, skip_bad=True)
    assert len(dls.train_ds) == 7
    tdata.wait_extracted(p)


# ---------------------------------------------------------------- poor: evaluate with an undecodable val image

def test_evaluate_names_an_undecodable_val_image(sub, tmp_path):
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.infer import export_model
    from tiny_fastai.recipe import evaluate_model
    learn = tiny_learner(tiny_dls(sub, size=16, bs=4, num_workers=0, seed=0), 'tiny', path=tmp_path/'run')
    export_model(learn, tmp_path/'run'/'model.safetensors')
    bad = sorted((sub/'val'/'images').glob('*.JPEG'))[0]
    bad.write_bytes(b'not an image')
    with pytest.raises(LayoutError) as e: evaluate_model(tmp_path/'run', data=sub, bs=4, num_workers=0, tta=False, out=False)
    _one_line(e.value, str(bad), 'evaluate', 'skip_bad=True')
    r = evaluate_model(tmp_path/'run', data=sub, bs=4, num_workers=0, tta=False, out=False, skip_bad=True)
    assert r['n_valid'] == 3
    # the command line: one line naming the file and --skip-bad, which evaluate accepts
    from conftest import run_main
    code, _, err = run_main('evaluate', tmp_path/'run', '--data', sub, '--bs', '4', '--workers', '0', '--no-tta', '--out', tmp_path/'ev')
    assert code == 2 and len(err.strip().splitlines()) == 1 and '--skip-bad' in err and bad.name in err, err
    code, out, err = run_main('evaluate', tmp_path/'run', '--data', sub, '--bs', '4', '--workers', '0', '--no-tta', '--skip-bad', '--json', '--out', tmp_path/'ev')
    assert code == 0 and json.loads(out)['n_valid'] == 3, err
