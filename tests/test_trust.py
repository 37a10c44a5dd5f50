"""Files from strangers and runs that get killed (issue 18): a hostile model.json is refused by its schema (`ModelInfo`)
before anything is built from it, in under a second and 500 MB; text from other people's files is escaped before it is
printed; empty paths, URLs and misspelt options get one line naming them; model.safetensors is byte-identical between
identical exports and readable as the umask says; evaluate checks where it writes first; hostile archives and one-class
data are refused by name; a checkpoint that does not fit names itself and --restart."""
import contextlib, io, json, os, subprocess, sys, tarfile, time, zipfile, shutil, pytest, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
import tiny_fastai
import tiny_fastai.cli as cli_mod
import tiny_fastai.recipe as recipe
from tiny_fastai.cli import main
from tiny_fastai.data import make_subset, sample_path, scan, LayoutError, ArchiveError
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.learner import tiny_learner, PlanError
from tiny_fastai.infer import ModelFileError, export_model, load_model, load_safetensors, model_info, read_model_info, _sha256
from tiny_fastai.files import check_out
from tiny_fastai.recipe import evaluate_model

from conftest import run_main   # the CLI in this process: (exit code, stdout, stderr)

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "(data, learner, run folder) : an untrained tiny learner on 3 classes of the sample, exported (seconds: nothing is trained)"
    d = tmp_path_factory.mktemp('trust')
    data = make_subset(sample_path(), d/'tiny', n_classes=3, n_train=8, n_val=4)
    learn = tiny_learner(tiny_dls(data, size=16, bs=4, num_workers=0, seed=0), 'tiny', path=d/'run')
    export_model(learn, d/'run'/'model.safetensors')
    return data, learn, d/'run'

@pytest.fixture
def pair(made, tmp_path):
    "A copy of the exported pair: (folder, its model.json as a dict)"
    d = tmp_path/'m'; d.mkdir()
    for f in ('model.safetensors', 'model.json'): shutil.copy(made[2]/f, d/f)
    return d, json.loads((d/'model.json').read_text())

def _write(d, info, raw=None): (d/'model.json').write_text(raw if raw is not None else json.dumps(info))

def _one_line(e, *names):
    s = str(e)
    assert '\n' not in s and all(n in s for n in names), s

# 3. a hostile model.json: refused before anything is built, quickly and in little memory
CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from tiny_fastai.infer import load_safetensors, ModelFileError
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 500 * 2**20, resource.RLIM_INFINITY))   # 500 MB more than now, at most
rss0, t = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
try: load_safetensors(sys.argv[1]); out = 'loaded'
except ModelFileError as e: out = 'refused: ' + str(e)
except BaseException as e: out = f'crashed: {type(e).__name__}: {e}'
print(json.dumps(dict(out=out, s=time.perf_counter() - t, mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)))
"""

HOSTILE = {'n_out': lambda i: dict(i, arch_kwargs={'n_out': 870000}),
           'item_size': lambda i: dict(i, item_size=[20000, 20000]),
           'size': lambda i: dict(i, size=20000),
           'many classes': lambda i: dict(i, classes=[f'c{n}' for n in range(870000)], arch_kwargs={'n_out': 870000})}

@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads VmSize from /proc')
@pytest.mark.parametrize('case', HOSTILE)
def test_hostile_model_json_refused_fast_and_small(pair, case):
    "A model.json asking for a huge network or huge images is refused by name in under a second and 500 MB (a subprocess under RLIMIT_AS)"
    d, info = pair
    _write(d, HOSTILE[case](info))
    r = subprocess.run([sys.executable, '-c', CHILD, str(d)], capture_output=True, text=True, timeout=300)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['out'].startswith('refused: ') and str(d/'model.json') in res['out'], res
    assert res['s'] < 1 and res['mb'] < 500, res

FIELDS = {   # the change, then what the one line must say (besides the file's name)
    'size 0':          (lambda i: dict(i, size=0), 'size must be an integer from 8 to 512'),
    'size 16.5':       (lambda i: dict(i, size=16.5), 'size must be an integer'),
    'size NaN':        (lambda i: dict(i, size=float('nan')), 'size must be an integer'),
    'item_size [64]':  (lambda i: dict(i, item_size=[64]), 'item_size must be [h, w]'),
    'stats 2 channels':(lambda i: dict(i, stats=[[0.5, 0.5], [0.2, 0.2]]), 'stats must be [mean, std] with 3 finite numbers'),
    'stats std 0':     (lambda i: dict(i, stats=[[0.5]*3, [0.2, 0, 0.2]]), 'std positive'),
    'resize key':      (lambda i: dict(i, resize=dict(mode='bilinear', antialias=True, scale=3)), 'resize must be an object with the keys mode and antialias'),
    'resize mode':     (lambda i: dict(i, resize=dict(mode='lanczos', antialias=True)), 'resize.mode must be one of'),
    'no sha256':       (lambda i: {k: v for k, v in i.items() if k != 'sha256'}, 'lacks sha256'),
    'bad sha256':      (lambda i: dict(i, sha256='abc'), 'sha256 must be the 64 hex digits'),
    'unknown field':   (lambda i: dict(i, exec='rm -rf'), "unknown field(s) 'exec'"),
    'duplicate class': (lambda i: dict(i, classes=[i['classes'][0]]*3), 'classes must name each output once'),
    'one class':       (lambda i: dict(i, classes=i['classes'][:1], arch_kwargs={'n_out': 1}), 'classes must be a list of 2'),
    'class not str':   (lambda i: dict(i, classes=[1, 2, 3]), 'classes must hold names'),
    'arch_kwargs key': (lambda i: dict(i, arch_kwargs={'n_out': 3, 'c_in': 300}), 'arch_kwargs must be {"n_out"'),
    'n_out bool':      (lambda i: dict(i, arch_kwargs={'n_out': True}), 'arch_kwargs.n_out must be an integer'),
    'version':         (lambda i: dict(i, version=2), 'version must be 1'),
}

@pytest.mark.parametrize('case', FIELDS)
def test_model_json_fields(pair, case):
    "Each bad field of model.json is one line naming the file and the field (no Python or torch text)"
    d, info = pair
    change, msg = FIELDS[case]
    _write(d, change(info))
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    _one_line(e.value, str(d/'model.json'), msg)

def test_model_json_deep_and_large(pair):
    "A 100,000-deep array and a model.json of more than MAX_INFO_BYTES are refused by name, not by a RecursionError"
    d, info = pair
    _write(d, None, '{"classes": ' + '['*100_000 + ']'*100_000 + '}')
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    _one_line(e.value, str(d/'model.json'), 'nested too deeply')
    _write(d, None, json.dumps(dict(info, data='x'*(5*2**20))))
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    _one_line(e.value, str(d/'model.json'), 'more than a model.json can be')

def _weights(d, info, change):
    "Rewrite the weights of `d` with `change(state_dict)`, and its model.json with their sha256 (only the one defect is left)"
    sd = {k: v.clone() for k, v in load_file(d/'model.safetensors').items()}   # load_file maps the file: copy before rewriting it
    change(sd); save_file(sd, d/'model.safetensors')
    _write(d, dict(info, sha256=_sha256(d/'model.safetensors')))

@pytest.mark.parametrize('dtype', [torch.int8, torch.bool])
def test_non_float_weights_refused(pair, dtype):
    d, info = pair
    _weights(d, info, lambda sd: sd.update({k: v.to(dtype) for k, v in sd.items() if v.is_floating_point()}))
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    _one_line(e.value, str(d/'model.safetensors'), 'not a float tensor')

def test_nan_weights_refused(pair):
    d, info = pair
    _weights(d, info, lambda sd: sd[sorted(k for k in sd if sd[k].is_floating_point())[0]].fill_(float('nan')))
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    _one_line(e.value, str(d/'model.safetensors'), 'NaN or infinite')

def test_model_info_is_the_schema(made):
    "ModelInfo is what export_model writes and load_safetensors reads; its Preprocess rebuilds the loaders' transforms"
    from tiny_fastai.infer import ModelInfo, Preprocess
    data, learn, out = made
    info = read_model_info(out/'model.json')
    assert isinstance(info, ModelInfo) and isinstance(info.pre, Preprocess)
    assert info == ModelInfo.from_json(info.to_json()) and info.to_json() == (out/'model.json').read_text()
    assert info.sha256 == _sha256(out/'model.safetensors') and info.classes == tuple(learn.dls.vocab)
    assert info.pre == Preprocess.from_dls(learn.dls) and info.pre.size == 16 and info.pre.item_size == (64, 64)
    with pytest.raises(Exception): info.arch = 'small'   # frozen
    m = load_model(out)
    assert m.info == info and m.vocab == list(learn.dls.vocab)
    valid = [type(t).__name__ for t in learn.dls.valid.after_batch.fs]
    assert [type(t).__name__ for t in m.batch_tfms()] == [n for n in valid if n in ('IntToFloatTensor', 'BatchResize', 'Normalize')]

def test_safetensors_byte_identical_and_umask(made, tmp_path):
    "Exports of the same weights are byte-identical (sorted header), readable as the umask says, and load back the same tensors"
    _, learn, out = made
    files = [export_model(learn, tmp_path/f'e{i}'/'model.safetensors') for i in range(8)]
    assert len({f.read_bytes() for f in files}) == 1
    assert len({(f.parent/'model.json').read_text() for f in files}) == 1
    um = os.umask(0); os.umask(um)
    assert files[0].stat().st_mode & 0o777 == 0o666 & ~um
    sd, own = load_file(files[0]), learn.model.state_dict()
    assert sorted(sd) == sorted(own) and all(torch.equal(sd[k], own[k].cpu()) for k in own)

# 4. class names and file names reach the terminal escaped
def test_escape_sequences_escaped(pair, made, tmp_path):
    d, info = pair
    evil = ['\x1b]0;owned\x07cat', 'dog\r\x1b[2Kfake line', 'bird\x9b31m']
    _write(d, dict(info, classes=evil))
    img = sorted((made[0]/'val'/'images').iterdir())[0]
    bad_name = tmp_path/'a\x1b[2Jb.JPEG'; shutil.copy(img, bad_name)
    code, o, err = run_main('predict', d, bad_name, '-k', '3')
    assert code == 0, err
    assert not any(c in o for c in '\x1b\r\x07\x9b') and '\\x1b]0;owned\\x07cat' in o and 'a\\x1b[2Jb.JPEG' in o, o
    code, o, err = run_main('predict', d, bad_name, '-k', '3', '--json')
    assert code == 0 and {c for c, _ in json.loads(o)[0]['top']} == set(evil)   # --json keeps the names (JSON escapes them)
    code, _, err = run_main('predict', d, tmp_path/'x\x1b[2Jmissing.jpg')
    assert code == 2 and '\x1b' not in err and 'x\\x1b[2Jmissing.jpg' in err, err
    from tiny_fastai.text import safe_text
    assert safe_text('café\t\x85') == 'café\\t\\x85'

# 5. empty paths
@pytest.mark.parametrize('args,opt', [
    (['train', '--out', '', '--data', 'missing'], '--out'), (['train', '--data', ''], '--data'),
    (['evaluate', ''], 'MODEL'), (['evaluate', 'RUN', '--data', ''], '--data'), (['evaluate', 'RUN', '--out', ''], '--out'),
    (['predict', '', 'IMG'], 'MODEL'), (['predict', 'RUN', ''], 'an image path is empty')])
def test_empty_paths_refused(made, tmp_path, monkeypatch, args, opt):
    "An empty path-like option is one line naming it, and nothing is written (the current folder stays empty)"
    monkeypatch.chdir(tmp_path)
    img = sorted((made[0]/'val'/'images').iterdir())[0]
    code, _, err = run_main(*[made[2] if a == 'RUN' else img if a == 'IMG' else a for a in args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and opt in err and 'empty' in err, err
    assert list(tmp_path.iterdir()) == []

def test_empty_paths_in_python(made):
    for f, msg in ((lambda: check_out(''), '--out is empty'), (lambda: get_tiny_imagenet(''), 'the data path is empty'),
                   (lambda: load_model(''), 'the model path is empty'), (lambda: evaluate_model(made[2], data=''), '--data is empty')):
        with pytest.raises(ValueError, match=msg): f()

# evaluate: where it writes is checked first
def test_evaluate_read_only_symlink_and_out(made, tmp_path, monkeypatch):
    data, _, out = made
    run = tmp_path/'run'; shutil.copytree(out, run)
    real, called = os.access, []
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if Path(p) == run else real(p, mode, **k))   # a read-only run folder
    monkeypatch.setattr(recipe, 'evaluate', lambda *a, **k: called.append(1) or {})
    code, _, err = run_main('evaluate', run, '--data', data, '--no-tta')
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'cannot be written' in err and '--out' in err and not called, err
    monkeypatch.undo()
    code, o, err = run_main('evaluate', run, '--data', data, '--no-tta', '--out', tmp_path/'elsewhere', '--workers', '0')
    assert code == 0 and (tmp_path/'elsewhere'/'evaluate.json').exists() and not (run/'evaluate').exists(), err
    target = tmp_path/'victim'; target.mkdir()
    (run/'evaluate').symlink_to(target)
    code, _, err = run_main('evaluate', run, '--data', data, '--no-tta')
    assert code == 2 and 'symbolic link' in err and list(target.iterdir()) == [], err

def test_interrupted_evaluate_does_not_promise_resume(made, monkeypatch):
    def stop(*a, **k): raise KeyboardInterrupt()
    monkeypatch.setattr(recipe, 'evaluate_model', stop)
    code, _, err = run_main('evaluate', made[2])
    assert code == 130 and 'resume' not in err and 'interrupted (SIGINT); run it again to start it over' in err, err

# archives, data, options
def test_hostile_archives_named_unsafe(tmp_path):
    "An archive with a member outside the folder or an absolute link says so (not 'truncated or corrupt'), and extracts nothing"
    t = tmp_path/'evil.tar.gz'
    with tarfile.open(t, 'w:gz') as tf:
        info = tarfile.TarInfo('../evil.txt'); info.size = 4; tf.addfile(info, io.BytesIO(b'evil'))
    l = tmp_path/'link.tar'
    with tarfile.open(l, 'w') as tf:
        info = tarfile.TarInfo('tiny-imagenet-200/link'); info.type = tarfile.SYMTYPE; info.linkname = '/etc/passwd'; tf.addfile(info)
    z = tmp_path/'evil.zip'
    with zipfile.ZipFile(z, 'w') as zf: zf.writestr('../../evil.txt', 'evil')
    for a in (t, l, z):
        with pytest.raises(ArchiveError) as e: get_tiny_imagenet(a, dest=tmp_path/'dest')
        assert 'unsafe member' in str(e.value) and 'truncated or corrupt' not in str(e.value) and str(a) in str(e.value), str(e.value)
    assert not (tmp_path/'evil.txt').exists() and not list((tmp_path/'dest').glob('*'))

def test_one_class_data_refused(tmp_path):
    d = make_subset(sample_path(), tmp_path/'one', n_classes=2, n_train=4, n_val=2)
    keep, drop = (d/'wnids.txt').read_text().split()
    (d/'wnids.txt').write_text(keep + '\n'); shutil.rmtree(d/'train'/drop)
    lines = (d/'val'/'val_annotations.txt').read_text().splitlines()
    for l in lines:
        if l.split('\t')[1] == drop: (d/'val'/'images'/l.split('\t')[0]).unlink()
    (d/'val'/'val_annotations.txt').write_text('\n'.join(l for l in lines if l.split('\t')[1] == keep) + '\n')
    with pytest.raises(LayoutError, match='at least 2'): scan(d)
    code, _, err = run_main('train', '--data', d, '--out', tmp_path/'o', '--sizes', '16', '--epochs', '1', '--bs', '4', '--no-tta')
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(d) in err and 'at least 2' in err, err
    assert not (tmp_path/'o').exists()

@pytest.mark.parametrize('args,has,hasnt', [
    (['train', '--sizes', '16.5', '--epochs', '1'], '--sizes: ', '2,2,4'),
    (['predict', 'RUN', 'IMG', '-k', '0'], '-k must be at least 1', '--k'),
    (['predict', 'RUN', 'https://example.com/cat.jpg'], 'https://example.com/cat.jpg: URLs are not supported', 'does not exist'),
    (['predict', 'https://example.com/model.safetensors', 'IMG'], 'URLs are not supported', 'does not exist')])
def test_option_messages(made, tmp_path, args, has, hasnt):
    img = sorted((made[0]/'val'/'images').iterdir())[0]
    code, _, err = run_main(*[made[2] if a == 'RUN' else img if a == 'IMG' else a for a in args])
    assert code == 2 and has in err and hasnt not in err and len(err.strip().splitlines()) == 1, err

def test_sample_path_without_package_file(made, monkeypatch):
    "A folder named tiny_fastai in the current folder (a clone) leaves the package without __file__ and __version__: both still work"
    monkeypatch.setattr(tiny_fastai, '__file__', None)
    monkeypatch.delattr(tiny_fastai, '__version__')
    assert (sample_path()/'wnids.txt').is_file()
    assert model_info(made[1]).tiny_fastai

def test_checkpoint_of_other_shape_names_file_and_restart(tmp_path):
    "A checkpoint with one tensor of another shape: one line naming the checkpoint and --restart"
    data = make_subset(sample_path(), tmp_path/'tiny', n_classes=3, n_train=8, n_val=4)
    args = ['train', '--data', data, '--out', tmp_path/'o', '--sizes', '16', '--epochs', '1', '--bs', '4', '--no-tta', '--workers', '0']
    code, _, err = run_main(*args)
    assert code == 0, err
    ck = next((tmp_path/'o').rglob('*.pth'))
    state = torch.load(ck, weights_only=True)
    k = sorted(k for k, v in state['model'].items() if v.ndim == 4)[0]
    state['model'][k] = torch.zeros(3); torch.save(state, ck)
    code, _, err = run_main(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ck) in err and '--restart' in err, err
