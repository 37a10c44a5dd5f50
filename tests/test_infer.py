"""tiny_fastai.infer with a model trained by `train_recipe` (on a 5-class slice of the bundled sample): the run writes
model.safetensors + model.json beside model.pkl; evaluate and predict load the pair by default without unpickling anything
and give the same results as the pickled learner; model.pkl is loaded only when named, with fastai's warning; files
that do not fit give one line naming them; predict decodes its images batch by batch."""
import contextlib, io, json, pickle, shutil, warnings, pytest, torch
from pathlib import Path
import fastai.learner
from fastai.learner import Learner
from safetensors.torch import load_file, save_file
import tiny_fastai.infer as infer
from tiny_fastai.infer import (TinyModel, ModelFileError, load_model, load_safetensors, predict_files, iter_predictions,
                               read_model_info)
from conftest import run_main   # the CLI in this process: (exit code, stdout, stderr)
from tiny_fastai.cli import main
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.recipe import train_recipe, evaluate_model

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A finished quick run: (its folder, its data, its results)"
    d = tmp_path_factory.mktemp('infer')
    data = make_subset(sample_path(), d/'tiny', n_classes=5, n_train=20, n_val=10)
    res = train_recipe('demo', out=d/'run', data=data, sizes=[16, 32], epochs=[1, 1], lrs=[2e-3], bs=16, tta=False, num_workers=0)
    return d/'run', data, res

@pytest.fixture(scope='module')
def images(run):
    "Six validation images of the run's data"
    return sorted((run[1]/'val'/'images').iterdir())[:6]

@pytest.fixture
def no_pickle(monkeypatch):
    "Make every way of unpickling (and `torch.load`, `load_learner`) fail"
    def refuse(*a, **k): raise AssertionError('pickle used')
    for mod, name in ((pickle, 'load'), (pickle, 'loads'), (pickle, 'Unpickler'), (torch, 'load'), (fastai.learner, 'load_learner')):
        monkeypatch.setattr(mod, name, refuse)

def test_train_writes_safetensors_pair(run):
    "The run writes model.safetensors and model.json (atomically: no temporary file left) with what rebuilds the model"
    out, _, res = run
    assert {'model.safetensors', 'model.json', 'model.pkl'} <= set(res.files)
    assert not list(out.glob('.model.*'))
    info = json.loads((out/'model.json').read_text())
    assert info['arch'] == 'tiny' and info['arch_kwargs'] == {'n_out': 5} and info['classes'] == res.classes
    assert info['size'] == 32 and info['item_size'] == [64, 64] and len(info['stats']) == 2 and len(info['wnids']) == 5
    assert all(w and w.startswith('n') for w in info['wnids']) and info['data'] == res.data
    sd = load_file(out/'model.safetensors')
    assert sd and all(isinstance(t, torch.Tensor) for t in sd.values())

def test_default_route_without_pickle(run, images, no_pickle):
    "A run folder, model.safetensors or model.json loads, evaluates and predicts with every unpickler disabled"
    out, data, res = run
    for p in (out, out/'model.safetensors', out/'model.json'): assert isinstance(load_model(p), TinyModel)
    ev = evaluate_model(out, data, num_workers=0, tta=False)
    assert ev['n_valid'] == 50 and ev['size'] == 32 and ev['top1'] == pytest.approx(res.top1, abs=1e-6)
    assert evaluate_model(out/'model.json', num_workers=0, tta=False)['top1'] == ev['top1']   # its own data by default
    code, o, err = run_main('predict', out, *images, '--json', '-k', '3')
    assert code == 0, err
    assert [Path(r['file']).name for r in json.loads(o)] == [f.name for f in images]
    code, o, err = run_main('evaluate', out, '--data', data, '--json', '--no-tta', '--workers', '0')
    assert code == 0 and json.loads(o)['top1'] == ev['top1'], err
    with pytest.raises(ModelFileError, match='pickle used'): load_model(out/'model.pkl')   # the patch works

def test_pickle_only_when_named(run, tmp_path):
    "model.pkl is loaded only when its path is given, with fastai's warning; a folder holding only a model.pkl is refused"
    out, _, _ = run
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        assert isinstance(load_model(out), TinyModel)
    assert not any('pickle' in str(w.message) for w in ws)
    with pytest.warns(UserWarning, match='pickle'): assert isinstance(load_model(out/'model.pkl'), Learner)
    shutil.copy(out/'model.pkl', tmp_path/'model.pkl')
    with pytest.raises(ModelFileError, match='no model.safetensors') as e: load_model(tmp_path)
    assert str(tmp_path/'model.pkl') in str(e.value)
    for cmd in ('predict', 'evaluate'):
        code, o, _ = run_main(cmd, '--help')
        assert code == 0 and 'model.safetensors' in o and 'pickle' in o and 'runs code' in o.replace('\n', ' ').replace('  ', ' ')

def test_same_results_both_routes(run, images):
    "evaluate (plain and TTA) and predict give the same numbers from the safetensors pair as from the pickled learner"
    out, data, _ = run
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = evaluate_model(out/'model.pkl', data, num_workers=0, tta=True, bs=16)
        pk = load_model(out/'model.pkl')
    b = evaluate_model(out, data, num_workers=0, tta=True, bs=16)
    assert a == b, (a, b)
    st = load_model(out)
    pa, pb = predict_files(pk, images, k=5, bs=4), predict_files(st, images, k=5, bs=4)
    assert [[c for c, _ in r['top']] for r in pa] == [[c for c, _ in r['top']] for r in pb]
    assert [p for r in pa for _, p in r['top']] == pytest.approx([p for r in pb for _, p in r['top']], abs=1e-5)

def _copy(out, d):
    d.mkdir()
    for f in ('model.safetensors', 'model.json'): shutil.copy(out/f, d/f)
    return d, json.loads((d/'model.json').read_text())

def _weights(d, info, change):
    "Rewrite the weights of `d` with `change(state_dict)`, and model.json with their sha256 (the digest is mandatory)"
    sd = {k: v.clone() for k, v in load_file(d/'model.safetensors').items()}; change(sd); save_file(sd, d/'model.safetensors')
    _rehash(d, info)

def _rehash(d, info): (d/'model.json').write_text(json.dumps(dict(info, sha256=infer._sha256(d/'model.safetensors'))))

BAD = {
    'missing json':    (lambda d, i: (d/'model.json').unlink(), 'model.json', 'is missing'),
    'invalid json':    (lambda d, i: (d/'model.json').write_text('{"arch": "tiny",'), 'model.json', 'is not valid JSON'),
    'json list':       (lambda d, i: (d/'model.json').write_text('[1, 2]'), 'model.json', 'holds a JSON list'),
    'missing keys':    (lambda d, i: (d/'model.json').write_text(json.dumps({k: v for k, v in i.items() if k not in ('arch', 'stats')})),
                        'model.json', 'lacks arch, stats'),
    'unknown arch':    (lambda d, i: (d/'model.json').write_text(json.dumps(dict(i, arch='resnet50'))), 'model.json', "unknown arch 'resnet50'"),
    'other arch':      (lambda d, i: (d/'model.json').write_text(json.dumps(dict(i, arch='small'))), 'model.safetensors',
                        "does not hold the weights of arch 'small'"),
    'other weights':   (lambda d, i: (d/'model.safetensors').write_bytes((d/'model.safetensors').read_bytes()[:-4] + b'\0\0\0\0'),
                        'model.json', 'was written for other weights'),
    'missing tensor':  (lambda d, i: _weights(d, i, lambda sd: sd.pop(sorted(sd)[0])), 'model.safetensors', 'missing '),
    'extra tensor':    (lambda d, i: _weights(d, i, lambda sd: sd.update(extra=torch.zeros(2))), 'model.safetensors', 'unexpected extra'),
    'wrong shape':     (lambda d, i: _weights(d, i, lambda sd: sd.update({k: torch.zeros(3) for k in sorted(sd)[:1]})),
                        'model.safetensors', 'is (3,), not'),
    'not safetensors': (lambda d, i: ((d/'model.safetensors').write_text('hello'), _rehash(d, i)),
                        'model.safetensors', 'is not a safetensors file'),
    'too few classes': (lambda d, i: (d/'model.json').write_text(json.dumps(dict(i, classes=i['classes'][:3]))), 'model.json',
                        'names 3 classes for a model with 5 outputs'),
}

@pytest.mark.parametrize('case', BAD)
def test_bad_model_files(run, tmp_path, case):
    "Each broken pair gives a one-line ModelFileError naming the file, in Python and from the CLI"
    out, data, _ = run
    change, fname, msg = BAD[case]
    d, info = _copy(out, tmp_path/'m')
    change(d, info)
    with pytest.raises(ModelFileError) as e: load_safetensors(d)
    assert str(d/fname) in str(e.value) and msg in str(e.value) and '\n' not in str(e.value), str(e.value)
    code, _, err = run_main('evaluate', d/'model.safetensors', '--data', data)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err

def test_read_model_info_ok(run):
    assert read_model_info(run[0]/'model.json').arch == 'tiny'

@pytest.mark.parametrize('route', ['safetensors', 'pkl'])
def test_predict_decodes_batch_by_batch(run, images, monkeypatch, route):
    "`iter_predictions` yields the first batch after opening `bs` files, and `predict_files` opens no more before each batch"
    out, _, _ = run
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = load_model(out if route == 'safetensors' else out/'model.pkl')
    opened, at_forward = [], []
    real = infer.open_image_file
    monkeypatch.setattr(infer, 'open_image_file', lambda f: (opened.append(f), real(f))[1])
    net = m.model
    h = net.register_forward_hook(lambda *a: at_forward.append(len(opened)))
    try:
        files = images + images[:1]   # 7 files, batches of 3
        first = next(iter_predictions(m, files, bs=3))
        assert first['file'] == str(files[0]) and len(opened) == 3
        opened.clear(); at_forward.clear()
        res = predict_files(m, files, bs=3)
        assert len(res) == 7 and at_forward == [3, 6, 7]
    finally: h.remove()

# ---------------------------------------------------------------- the inference path without fastai (issue 25)
import subprocess, sys
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

def _py(code):
    "Run `code` in a new interpreter with this checkout's package: (exit code, stdout, stderr)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**__import__('os').environ, 'PYTHONPATH': str(ROOT)})
    return r.returncode, r.stdout, r.stderr

def test_inference_imports_no_fastai(run, images, tmp_path):
    "Loading the safetensors pair, predict (with --cam) and the page's predictions run without importing fastai; a bad model.json too"
    out, _, _ = run
    (tmp_path/'bad').mkdir(); shutil.copy(out/'model.safetensors', tmp_path/'bad')
    (tmp_path/'bad'/'model.json').write_text('{"arch": "tiny",')
    code, o, err = _py(f'''
import sys
from tiny_fastai.cli import main
from tiny_fastai.infer import load_model, predict_files
from tiny_fastai.app import image_maps, predict_page
m = load_model({str(out)!r})
predict_files(m, {[str(f) for f in images]!r}); image_maps(m, {[str(images[0])]!r}); predict_page(m, {str(images[0])!r})
assert main(['predict', {str(out)!r}, {str(images[0])!r}, '--cam', {str(tmp_path/'cams')!r}]) == 0
assert main(['predict', {str(tmp_path/'bad')!r}, {str(images[0])!r}]) == 2
print('fastai' in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('fastai', 'fastcore', 'pandas')))''')
    assert code == 0, err
    assert o.strip().splitlines()[-1] == 'False []', o          # main imported fastai (1 GB) for each of these
    assert 'model.json is not valid JSON' in err

def test_runtime_network_is_the_models_network():
    "Every arch: the plain-torch network of tiny_fastai.runtime has the keys and shapes of tiny_fastai.models' and its outputs (1e-5)"
    from tiny_fastai.models import ARCHS, get_arch
    from tiny_fastai.runtime import NETS, net
    from tiny_fastai.plan import MAX_SIZE
    assert list(NETS) == list(ARCHS) and infer.MAX_SIDE == MAX_SIZE
    for a in ARCHS:
        torch.manual_seed(0)
        m1, m2 = get_arch(a)(n_out=7).eval(), net(a, 7).eval()
        sd = m1.state_dict()
        assert {k: v.shape for k, v in m2.state_dict().items()} == {k: v.shape for k, v in sd.items()}, a
        for v in sd.values():
            if v.is_floating_point(): v.add_(torch.randn_like(v)*0.05)   # not the init: running stats and biases matter
        m2.load_state_dict(sd)
        x = torch.randn(2, 3, 40, 40)
        with torch.no_grad(): assert torch.allclose(m1(x), m2(x), atol=1e-5), a

def test_plain_preprocessing_is_fastais(run, tmp_path):
    "Odd sizes, gray, RGBA, palette, 16-bit: the plain-torch crop and batch equal the fastai transforms of model.json, probabilities to 1e-5"
    from fastai.vision.all import PILImage, TensorImage, compose_tfms
    out, _, _ = run
    m = load_model(out)
    ims = [Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 517, 3), dtype=np.uint8)),
           Image.fromarray(np.random.RandomState(1).randint(0, 255, (8, 9), dtype=np.uint8), 'L'),
           Image.fromarray(np.random.RandomState(2).randint(0, 255, (40, 50, 4), dtype=np.uint8), 'RGBA'),
           Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 64, 3), dtype=np.uint8)).convert('P'),
           Image.fromarray(np.random.RandomState(4).randint(0, 65535, (70, 33), dtype=np.uint16))]
    files = []
    for i, im in enumerate(ims): im.save(tmp_path/f'{i}.png'); files.append(tmp_path/f'{i}.png')
    from tiny_fastai.runtime import open_image_file
    pil = [open_image_file(f) for f in files]
    mine = m.info.pre.batch(torch.stack([m.info.pre.crop(im) for im in pil]))
    ref = compose_tfms(TensorImage(torch.stack([compose_tfms(PILImage(im), m.item_tfms(), split_idx=1) for im in pil])), m.batch_tfms(), split_idx=1)
    assert torch.allclose(mine, ref.as_subclass(torch.Tensor), atol=1e-5)
    with torch.no_grad(): p1, p2 = torch.softmax(m.model(mine), 1), torch.softmax(m.model(ref.as_subclass(torch.Tensor)), 1)
    assert torch.allclose(p1, p2, atol=1e-5)

def test_huge_image_refused_before_decoding(run, tmp_path):
    "A small PNG that claims 10,000 x 8,000 px (80 MP: PIL would decode it) is refused by its header, in one line naming it"
    out, _, _ = run
    Image.new('1', (10_000, 8_000)).save(tmp_path/'huge.png')   # a few KB on disk, 240 MB decoded
    assert (tmp_path/'huge.png').stat().st_size < 100_000
    code, o, err = run_main('predict', out, tmp_path/'huge.png')
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"image {tmp_path/'huge.png'} is too large to use (10000 x 8000 px; at most 50,000,000 pixels)" in err

def test_non_image_error_keeps_the_name_whole(run, tmp_path):
    "The error for a file that is not an image names it whole (main cut the name mid-word at 120 characters)"
    out, _, _ = run
    f = tmp_path/('a-long-descriptive-name-of-holiday-notes-' * 3 + 'final.jpg')
    f.write_text('not an image')
    code, _, err = run_main('predict', out, f)
    assert code == 2 and f"{f} is not an image that PIL can read" in err, err
    assert err.count(str(tmp_path)) == err.count(str(f)), err   # each mention of its folder is followed by the whole name
