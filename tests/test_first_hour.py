"""What a first hour with tiny_fastai shows (issue 12): the interpretation of a run (most confused pairs, top losses,
confusion matrix), GPU presets refused on a CPU with an estimate, one plain line per epoch in logs, pictures saved
to files in a terminal without a display, interactive runs in a named folder, errors that name the caller's argument."""
import json, sys, pytest, torch
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from pathlib import Path
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.files import figures_to_files, save_figures
from tiny_fastai.learner import tiny_learner
from tiny_fastai.fit import progressive_fit
from tiny_fastai.checkpoint import CheckpointError
from tiny_fastai.plan import PlanError
from tiny_fastai.callbacks import ThrottledProgress, PlainProgress
from tiny_fastai.recipe import train_recipe, evaluate_model, cpu_estimate
from tiny_fastai.plan import resolve_plan
import tiny_fastai.recipe as recipe
from conftest import run_main

FAST = dict(sizes=[16, 32], epochs=[1, 1], lrs=[2e-3], bs=16, tta=False, sched='stages')

@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    "One short run, its printed output and its folder"
    import contextlib, io
    out, o = tmp_path_factory.mktemp('run'), io.StringIO()
    with contextlib.redirect_stdout(o): res = train_recipe('demo', out=out, data=data, **FAST)
    return out, res, o.getvalue()

def test_interpretation_written_by_train_and_evaluate(run, data):
    "results.json has the most confused pairs with readable names; top_losses.png and confusion.png are small pictures"
    out, res, _ = run
    saved = json.loads((out/'results.json').read_text())
    mc = saved['most_confused']
    assert mc and len(mc) <= 20 and mc == res.most_confused
    assert all(isinstance(a, str) and isinstance(b, str) and a != b and isinstance(n, int) and n > 0 for a,b,n in mc)
    assert {a for a,_,_ in mc} <= set(saved['classes']) and not any(c.startswith('n0') for c,_,_ in mc)   # names, not wnids
    assert [n for *_,n in mc] == sorted((n for *_,n in mc), reverse=True)
    for f in ('top_losses.png', 'confusion.png'):
        assert 0 < (out/f).stat().st_size < 300_000 and f in saved['files'], f
    assert saved['interpret_s'] >= 0 and not plt.get_fignums()   # figures closed after saving (no bound on seconds: the machine's speed varies)
    ev = evaluate_model(out/'model.pkl', data, tta=False, out=out/'ev')
    assert ev['most_confused'] == json.loads((out/'ev'/'evaluate.json').read_text())['most_confused']
    assert (out/'ev'/'confusion.png').exists() and (out/'ev'/'top_losses.png').exists()
    assert 'preds' not in ev and json.dumps(ev)
    before = {f: (out/f).read_bytes() for f in ('top_losses.png', 'confusion.png')}
    ev = evaluate_model(out, data, tta=False)                       # the run folder: train's pictures stay as they are
    assert ev['out'] == str(out/'evaluate') and (out/'evaluate'/'evaluate.json').exists() and (out/'evaluate'/'confusion.png').exists()
    assert {f: (out/f).read_bytes() for f in before} == before

def test_plain_lines_when_stdout_is_not_a_terminal(run):
    "In a log (stdout not a terminal): a header per stage and one plain line per epoch, no progress-bar redraws"
    _, _, text = run
    assert 'stage 1 of 2: 16 px, 1 epochs, lr 2.0e-03' in text and 'stage 2 of 2: 32 px, 1 epochs, lr 2.0e-03' in text
    lines = [l for l in text.splitlines() if l.startswith('epoch ')]
    assert [l.split()[:3] for l in lines] == [['epoch', '1/2', '16'], ['epoch', '2/2', '32']]
    assert all('train_loss' in l and 'valid_loss' in l and 'top1' in l and l.endswith(' s') for l in lines)
    assert '\r' not in text and '█' not in text

def test_progress_bar_in_a_terminal(data, tmp_path, monkeypatch):
    dls = tiny_dls(data, size=16, bs=8, num_workers=0)
    assert isinstance(tiny_learner(dls, path=tmp_path).progress, PlainProgress)
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True, raising=False)
    assert isinstance(tiny_learner(dls, path=tmp_path).progress, ThrottledProgress)

def test_gpu_presets_refused_on_a_cpu(tmp_path, monkeypatch):
    "sprint/full without a GPU: one line with the estimate, naming --cpu (the CLI) or device='cpu' (Python); nothing written"
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(recipe, 'cpu_estimate', lambda r, **kw: [60.0]*len(r.sizes))
    code, _, err = run_main('train', '--preset', 'sprint', '--out', tmp_path/'s')
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert '--cpu' in err and 'about 0.7 hours' in err and '1 min at 48px' in err and 'timing one training step' in err
    with pytest.raises(PlanError, match="device='cpu'"): train_recipe('full', out=tmp_path/'f')
    assert not (tmp_path/'s').exists() and not (tmp_path/'f').exists()

def test_cpu_estimate_times_a_step():
    est = cpu_estimate(resolve_plan('demo'))
    assert len(est) == 2 and all(s > 0 for s in est)

def test_mismatched_checkpoint_names_the_callers_argument(data, tmp_path):
    "progressive_fit: resume=False; train_recipe and the command line (one message for both): --restart (restart=True in Python); always the checkpoint's path"
    train_recipe('demo', out=tmp_path/'p', data=data, **FAST)
    with pytest.raises(CheckpointError) as e: train_recipe('demo', out=tmp_path/'p', data=data, **{**FAST, 'epochs': [2, 1]})
    msg = str(e.value)
    assert '--restart (restart=True in Python)' in msg and str(tmp_path/'p'/'models'/'ckpt.pth') in msg
    code, _, err = run_main('train', '--data', data, '--out', tmp_path/'p', '--sizes', '16,32', '--epochs', '1,2', '--bs', '16', '--no-tta')
    assert code == 2 and '--restart' in err
    learn = tiny_learner(tiny_dls(data, size=16, bs=8, num_workers=0), path=tmp_path/'p')
    with pytest.raises(CheckpointError, match='resume=False'): progressive_fit(learn, [(16, 3, 1e-3)])

def test_interactive_learner_writes_into_a_named_folder(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    learn = tiny_learner(tiny_dls(data, size=16, bs=8, num_workers=0))
    assert learn.path == Path('runs')/'interactive' and 'runs/interactive' in capsys.readouterr().out

def test_figures_saved_in_a_terminal_without_display(tmp_path, monkeypatch, capsys):
    "A terminal session (sys.ps1) on Agg: after each statement the open figures go to files and their paths are printed"
    monkeypatch.delattr(sys, 'ps1', raising=False)
    assert figures_to_files(tmp_path) is False                      # a script: nothing changes
    monkeypatch.setattr(sys, 'ps1', '>>> ', raising=False)
    monkeypatch.setattr(sys, 'displayhook', sys.displayhook)        # restored after the test
    assert figures_to_files(tmp_path) is True
    plt.plot([1, 2]); sys.displayhook(None)
    plt.plot([2, 1]); sys.displayhook(None)
    assert (tmp_path/'figure_1.png').stat().st_size > 0 and (tmp_path/'figure_2.png').exists()
    assert str(tmp_path/'figure_2.png') in capsys.readouterr().out and not plt.get_fignums()
    assert save_figures() == []
