"""The `tiny-fastai` command: the demo preset end to end in a subprocess (small epochs) with its results.json, the exported
model reloaded in new processes by `predict` (awkward images) and `evaluate`, and one-line errors with exit code 2."""
import contextlib, io, json, os, subprocess, sys, shutil, pytest
from pathlib import Path
import numpy as np
from PIL import Image
from tiny_fastai.cli import main
from tiny_fastai.data import make_subset, sample_path
from conftest import run_main, venv_bin

BIN = venv_bin('tiny-fastai')
def cli(*args, cwd=None):
    return subprocess.run([BIN] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "`tiny-fastai train` (the demo preset on the bundled sample) with 1 epoch per stage, run from a fresh folder"
    d = tmp_path_factory.mktemp('demo')
    r = cli('train', '--epochs', '1,1', cwd=d)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d/'runs'/'demo', r

@pytest.fixture(scope='module')
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp('imgs')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), 'L').save(d/'gray.jpg')
    Image.fromarray(rng.integers(0, 255, (48, 40, 4), dtype=np.uint8), 'RGBA').save(d/'rgba.png')
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d/'tiny8.png')
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(d/'big500x300.jpg')
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), 'L').convert('P').save(d/'palette.gif')
    shutil.copy(next((sample_path()/'val'/'images').iterdir()), d/'val.JPEG')
    (d/'notes.txt').write_text('not an image'); (d/'empty.png').write_bytes(b'')
    return d

def test_demo_end_to_end(demo):
    "The demo writes results.json with the documented fields, the exported model, the plots, and ends with a table"
    out, r = demo
    res = json.loads((out/'results.json').read_text())
    for k in ('recipe', 'top1', 'top5', 'top1_tta', 'top5_tta', 'params', 'wall_s', 'phases', 'device', 'history'):
        assert k in res, k
    assert res['recipe']['stages'] == [[24, 1, 1e-2], [32, 1, 1e-2]] and res['recipe']['name'] == 'demo'
    assert len(res['history']) == 2 and {'data', 'stage 1', 'stage 2', 'evaluate', 'export', 'pictures'} <= set(res['phases'])
    for h, size in zip(res['history'], (24, 32)):
        assert h['size'] == size and {'stage', 'train_loss', 'valid_loss', 'top1', 'top5'} <= set(h)
    assert 0 <= res['top1'] <= res['top5'] <= 1 and 0 <= res['top1_tta'] <= res['top5_tta'] <= 1
    assert res['n_valid'] == 500 and len(res['classes']) == 10 and res['device'].startswith('cpu')
    assert isinstance(res['params'], int) and res['params'] > 0 and res['wall_s'] > 0
    for f in ('model.pkl', 'history.png', 'history.csv'): assert (out/f).stat().st_size > 0, f
    assert '| top-1 |' in r.stdout and '| top-5 |' in r.stdout and 'wrote ' in r.stdout

def test_predict_in_new_process(demo, images):
    "A new process loads model.pkl and gives the top 5 readable classes for grayscale, RGBA, 8x8, 500x300, palette images"
    out, _ = demo
    names = ['gray.jpg', 'rgba.png', 'tiny8.png', 'big500x300.jpg', 'palette.gif', 'val.JPEG']
    r = cli('predict', out/'model.pkl', *[images/n for n in names], '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    res, classes = json.loads(r.stdout), json.loads((out/'results.json').read_text())['classes']
    assert [Path(o['file']).name for o in res] == names
    for o in res:
        assert len(o['top']) == 5 and all(c in classes for c, _ in o['top'])
        ps = [p for _, p in o['top']]
        assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-5

def test_predict_errors(demo, images):
    "A file that is not an image, an empty file or a missing file: one line on stderr naming it, exit code 2"
    out, _ = demo
    r = cli('predict', out/'model.pkl', images/'notes.txt')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().startswith(f"tiny-fastai predict: error: {images/'notes.txt'} is not an image that PIL can read")
    assert len(r.stderr.strip().splitlines()) == 1
    for f, msg in (('empty.png', 'is an empty file'), ('missing.jpg', 'does not exist')):
        code, _, err = run_main('predict', out/'model.pkl', images/f)
        assert code == 2 and f in err and msg in err and len(err.strip().splitlines()) == 1

def test_evaluate_in_new_process(demo):
    "`tiny-fastai evaluate` reloads the model and gives the same plain accuracy as at the end of training"
    out, _ = demo
    r = cli('evaluate', out/'model.pkl', '--data', sample_path(), '--json', '--no-tta')
    assert r.returncode == 0, r.stderr[-3000:]
    ev, res = json.loads(r.stdout), json.loads((out/'results.json').read_text())
    assert ev['n_valid'] == 500 and ev['top1'] == pytest.approx(res['top1'], abs=1e-6)
    assert ev['top5'] == pytest.approx(res['top5'], abs=1e-6)
    r = cli('evaluate', out/'model.pkl', '--json', '--no-tta')     # without --data: the data it was trained on
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)['top1'] == pytest.approx(res['top1'], abs=1e-6)

def test_model_file_errors(demo, tmp_path):
    "A model file that is not a learner export, or one exported for another set of classes, gives one clear line"
    out, _ = demo
    (tmp_path/'fake.pkl').write_text('hello')
    code, _, err = run_main('evaluate', tmp_path/'fake.pkl', '--data', sample_path())
    assert code == 2 and 'is not a learner exported' in err and len(err.strip().splitlines()) == 1
    other = make_subset(sample_path(), tmp_path/'other', n_classes=5, n_train=2, n_val=2)
    code, _, err = run_main('evaluate', out/'model.pkl', '--data', other)
    assert code == 2 and 'was exported for another set of classes: it knows 10 classes' in err, err

@pytest.mark.parametrize('args,msg', [
    (['--epochs', '300,201'], 'the plan has 501 epochs in all'),
    (['--bs', '0'], 'the batch size must be a positive integer, got 0'),
    (['--lr=-1e-3'], 'the learning rate must be a positive number'),
    (['--preset', 'huge'], "unknown preset 'huge'; known presets: demo, sprint, full"),
    (['--arch', 'resnet50'], "unknown arch 'resnet50'"),
    (['--data', '/nonexistent/tiny'], '/nonexistent/tiny does not exist'),
    (['--sizes', '20000', '--epochs', '1'], 'stage 1: size 20000 px is above the limit of 512 px'),
])
def test_train_errors(tmp_path, args, msg):
    "Bad settings: exit code 2, one line on stderr that names the problem, nothing written"
    code, _, err = run_main('train', '--out', tmp_path/'o', *args)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'o').exists()

def test_bad_image_refused_unless_skip_bad(tmp_path):
    "An image in the data that cannot be decoded is listed and the run refuses to start; with --skip-bad it is left out"
    data = make_subset(sample_path(), tmp_path/'tiny', n_classes=3, n_train=10, n_val=4)
    bad = sorted((data/'train').glob('*/images/*.JPEG'))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    args = ['train', '--data', data, '--out', tmp_path/'o', '--sizes', '16', '--epochs', '1', '--lr', '1e-3', '--bs', '8', '--no-tta']
    code, _, err = run_main(*args)
    assert code == 2 and bad.name in err and '--skip-bad' in err, err
    assert not (tmp_path/'o').exists()
    code, out, err = run_main(*args, '--skip-bad')
    assert code == 0, err
    assert json.loads((tmp_path/'o'/'results.json').read_text())['n_train'] == 29

def test_safetensors_by_default_in_new_process(demo, images):
    "The run folder loads model.safetensors + model.json (no pickle warning), with the same top-1; model.pkl, when named, warns"
    out, _ = demo
    assert (out/'model.safetensors').stat().st_size > 0 and json.loads((out/'model.json').read_text())['arch'] == 'tiny'
    r = cli('evaluate', out, '--json', '--no-tta')
    assert r.returncode == 0 and 'pickle' not in r.stderr, r.stderr[-3000:]
    assert json.loads(r.stdout)['top1'] == pytest.approx(json.loads((out/'results.json').read_text())['top1'], abs=1e-6)
    r = cli('predict', out/'model.safetensors', images/'val.JPEG', images/'gray.jpg')
    assert r.returncode == 0 and 'pickle' not in r.stderr and len(r.stdout.strip().splitlines()) == 2, r.stderr[-3000:]
    r = cli('predict', out/'model.pkl', images/'val.JPEG')
    assert r.returncode == 0 and 'pickle' in r.stderr, r.stderr[-3000:]

def test_read_only_out(tmp_path, monkeypatch):
    "A read-only --out: one line naming it, exit code 2, before the data is read"
    ro = tmp_path/'ro'; ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))   # as chmod 555 does (not for root)
    code, _, err = run_main('train', '--out', ro, '--data', sample_path())
    assert code == 2 and len(err.strip().splitlines()) == 1 and f'--out {ro} cannot be written' in err, err

_HELP_PROBE = '''import sys
from tiny_fastai.cli import main
try: main(sys.argv[1:])
except SystemExit as e: print('exit', e.code)
print('fastai' in sys.modules, 'torch' in sys.modules)'''

def test_cli_import_is_light():
    "Importing the CLI imports neither fastai nor torch (what makes `tiny-fastai --help` instant)"
    r = subprocess.run([sys.executable, '-c', "import tiny_fastai.cli; import sys; print('fastai' in sys.modules, 'torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ['False', 'False'], r.stdout + r.stderr[-2000:]

@pytest.mark.parametrize('args', [['--help'], ['train', '--help'], ['evaluate', '--help'], ['predict', '--help']])
def test_help_imports_no_fastai(args):
    "Every --help of the CLI prints its usage and exits 0 without importing fastai or torch"
    r = subprocess.run([sys.executable, '-c', _HELP_PROBE, *args], capture_output=True, text=True, timeout=120)
    out = r.stdout.splitlines()
    assert r.returncode == 0 and out[-2:] == ['exit 0', 'False False'], r.stdout[-2000:] + r.stderr[-2000:]
    assert out[0].startswith('usage: tiny-fastai' + ''.join(' ' + a for a in args[:-1]))

def test_help_command():
    "`tiny-fastai --help` (the installed console script) exits 0 with the usage and the three commands"
    r = cli('--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: tiny-fastai ') and not r.stderr, r.stderr[-2000:]
    assert all(c in r.stdout for c in ('train', 'evaluate', 'predict'))

def test_sigterm_saves_and_exits_143(tmp_path):
    "SIGTERM during training (a scheduler's stop): the epoch finishes, the checkpoint is saved, exit code 143 (SIGTERM's), not 130"
    import signal
    data = make_subset(sample_path(), tmp_path/'tiny', n_classes=3, n_train=20, n_val=6)
    p = subprocess.Popen([BIN, 'train', '--data', data, '--out', tmp_path/'o', '--sizes', '16', '--epochs', '50', '--lr', '1e-3',
                          '--bs', '8', '--no-tta', '--workers', '0'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:   # the first epoch's line: training is under way
        if line.startswith('epoch 1/'): break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 143 and 'interrupted (SIGTERM)' in err and 'run the same command again to resume' in err, err[-2000:]
    assert (tmp_path/'o'/'models'/'ckpt.pth').exists()

def test_argument_errors_come_before_fastai(tmp_path):
    "A bad value of any train option is refused before fastai (or torch) is imported: the CLI checks the whole recipe first"
    probe = ('import sys\nfrom tiny_fastai.cli import main\ncode = main(sys.argv[1:])\n'
             "print(code, 'fastai' in sys.modules, 'torch' in sys.modules)")
    for args in (['--arch', 'resnet50'], ['--budget', '9 parsecs'], ['--ema', 'x'], ['--mix', 'blend'], ['--data', str(tmp_path/'none')],
                 ['--cache-dir', ''], ['--sizes', '16.5', '--epochs', '1'], ['--tta', 'five'], ['--compile', 'always']):
        r = subprocess.run([sys.executable, '-c', probe, 'train', '--out', str(tmp_path/'o'), *args], capture_output=True, text=True, timeout=120)
        assert r.stdout.split() == ['2', 'False', 'False'] and len(r.stderr.strip().splitlines()) == 1, (args, r.stdout, r.stderr[-2000:])

def test_train_options_are_the_recipe_fields():
    "Every field of Recipe and RunOptions (and the per-stage lists of Stage) is an option of `train`, with its help; every arch is listed"
    from dataclasses import fields
    from tiny_fastai.plan import Recipe, RunOptions, ARCH_PRESETS
    from tiny_fastai.cli import get_parser
    p = get_parser()
    train = p._subparsers._group_actions[0].choices['train']
    opts = {o for a in train._actions for o in a.option_strings}
    want = {'--' + f.metadata.get('name', f.name).replace('_', '-') for cls in (Recipe, RunOptions) for f in fields(cls) if f.metadata.get('name', f.name)}
    assert want | {'--sizes', '--epochs', '--lr'} <= opts, sorted(want - opts)
    assert all(a in train.format_help() for a in ARCH_PRESETS)
