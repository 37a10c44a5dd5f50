"""tiny_fastai.recipe (`train_recipe` in-process, on a 5-class slice of the bundled sample): plans and settings refused
before any data is read, lr=None uses lr_find, same seed -> same metrics, NaN stops the run and keeps the last good
checkpoint, checkpoints of another run or corrupt ones are refused clearly, results.json, the presets obey the rules,
the long-run loop resumes exactly, and Ctrl-C/SIGTERM finish the epoch, save and stop."""
import json, os, signal, pytest, torch
from pathlib import Path
from fastai.learner import Learner
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.recipe import train_recipe
from tiny_fastai.plan import resolve_plan, get_recipe, Recipe
from tiny_fastai.checkpoint import read_checkpoint, CheckpointError, CKPT_FORMAT
from tiny_fastai.plan import PlanError
from tiny_fastai.callbacks import NanLossError
from tiny_fastai.models import check_rules, get_arch
from conftest import StopAfterEpoch, SignalAt   # the callbacks that interrupt a run, shared with the learner's tests

FAST = dict(sizes=[16, 32], epochs=[1, 1], lrs=[2e-3], bs=16, tta=False, sched='stages')
METRICS = ('train_loss', 'valid_loss', 'top1', 'top5')

@pytest.mark.parametrize('kw,msg', [
    (dict(epochs=[300, 201]), '501 epochs in all'),
    (dict(sizes=[64], epochs=[501]), 'the rules allow at most 500'),
    (dict(bs=0), 'batch size must be a positive integer, got 0'),
    (dict(bs=1), 'batch size must be at least 2 (batch norm needs two images per training batch), got 1'),
    (dict(seed=2**64), 'the seed must be between 0 and 4294967295'),
    (dict(seed=-1), 'the seed must be between 0 and 4294967295'),
    (dict(lrs=[-1e-3]), 'learning rate must be a positive number'),
    (dict(preset='huge'), "unknown preset 'huge'; known presets: demo, sprint, full"),
    (dict(arch='resnet50'), "unknown arch 'resnet50'; known archs: tiny, small, medium, large, dense, dense_wide, sep_fused, sep_fused_s"),
    (dict(epochs=[2, 2, 2]), 'got 3 epoch count(s) for the 2 stages'),
])
def test_bad_settings_refused_before_data(tmp_path, kw, msg):
    "Every bad setting is refused with a message naming it, before the (here missing) data is looked at or anything written"
    kw = {'preset': 'demo', **kw}
    with pytest.raises(ValueError) as e: train_recipe(out=tmp_path/'out', data=tmp_path/'missing', **kw)
    assert msg in str(e.value)
    assert not (tmp_path/'out').exists()

def test_lr_none_uses_lr_find(data, tmp_path, monkeypatch):
    "A stage without a learning rate runs lr_find once, trains with its suggestion and keeps the plot"
    calls, real = [], Learner.lr_find
    def spy(self, *args, **kwargs):
        calls.append(kwargs); return real(self, *args, **kwargs)
    monkeypatch.setattr(Learner, 'lr_find', spy)
    res = train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'lrs': [None, 1e-3]})
    assert len(calls) == 1
    lr = res.stages[0]['lr']
    assert isinstance(lr, float) and 1e-7 < lr < 10 and res.stages[1]['lr'] == 1e-3
    assert res.history[0]['lr'] == lr and res.history[1]['lr'] == 1e-3
    assert (tmp_path/'lr_find_1_16px.png').stat().st_size > 0
    assert 'lr_find_1_16px.png' in res.files

def test_one_cycle_takes_one_learning_rate():
    "sched 'one' has one peak learning rate: different rates per stage are refused, not silently replaced by the first"
    with pytest.raises(PlanError, match="sched 'one' runs one cycle across the stages with one peak learning rate"):
        resolve_plan('demo', lrs=[1e-2, 1e-3])
    assert resolve_plan('demo', lrs=[3e-3]).lrs == [3e-3, 3e-3] and resolve_plan('sprint').sched == 'one'

def test_same_seed_same_metrics(data, tmp_path):
    "Two runs with the same seed and data on the CPU give the same losses and accuracies; another seed does not"
    a = train_recipe('demo', out=tmp_path/'a', data=data, seed=3, **FAST)
    b = train_recipe('demo', out=tmp_path/'b', data=data, seed=3, **FAST)
    c = train_recipe('demo', out=tmp_path/'c', data=data, seed=4, **FAST)
    rows = lambda r: [[h[k] for k in METRICS] for h in r.history]
    assert rows(a) == rows(b) and (a.top1, a.top5) == (b.top1, b.top5)
    assert rows(a) != rows(c)

def test_nan_stops_keeps_last_good_checkpoint_and_resumes(data, tmp_path):
    "A loss that becomes NaN stops the run naming the epoch; the last good checkpoint is kept and a lower lr resumes from it"
    with pytest.raises(NanLossError) as e:
        train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'lrs': [2e-3, 1e38]})
    msg = str(e.value)
    assert msg.startswith('the training loss became nan in epoch 2 of 2 (stage 2 of 2, 32px)'), msg
    assert 'last good epoch (1) is kept' in msg and 'Exception occured' not in msg
    st = read_checkpoint(tmp_path/'models'/'ckpt.pth')
    assert len(st['history']) == 1 and st['meta']['stage'] == 0
    assert not (tmp_path/'results.json').exists() and not (tmp_path/'model.pkl').exists()
    res = train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'lrs': [2e-3, 1e-3]})
    assert [h['run'] for h in res.history] == [1, 2] and res.epochs == 2
    assert res.stages[1]['lr'] == 1e-3

def test_checkpoint_of_another_run_or_corrupt_is_refused(data, tmp_path):
    "A checkpoint written for another plan is refused (not trained on); a corrupt one gives a clear error; --restart starts over"
    train_recipe('demo', out=tmp_path, data=data, **FAST)
    with pytest.raises(CheckpointError, match='belongs to another run'):
        train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'epochs': [2, 1]})
    ck = tmp_path/'models'/'ckpt.pth'
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='cannot be read'):
        train_recipe('demo', out=tmp_path, data=data, **FAST)
    res = train_recipe('demo', out=tmp_path, data=data, restart=True, **{**FAST, 'epochs': [2, 1]})
    assert len(res.history) == 3 and read_checkpoint(ck)['format'] == CKPT_FORMAT

def test_results_json(data, tmp_path):
    "results.json has the documented keys, one history row per planned epoch, and fractions in [0, 1]"
    train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'tta': True})
    r = json.loads((tmp_path/'results.json').read_text())
    for k in ('recipe', 'top1', 'top5', 'top1_tta', 'top5_tta', 'params', 'wall_s', 'phases', 'device', 'history'):
        assert k in r, k
    # the recipe as trained, whole: what was asked for (the preset with FAST's settings), nothing repeated beside it
    assert Recipe.from_dict(r['recipe']) == resolve_plan('demo', data=data, **{**FAST, 'tta': 'aug'})
    assert r['recipe']['stages'] == [[16, 1, 2e-3], [32, 1, 2e-3]] and len(r['history']) == 2
    assert not {'stages', 'epochs', 'arch', 'bs', 'sched', 'preset'} & set(r)
    assert [(h['stage'], h['size']) for h in r['history']] == [(0, 16), (1, 32)]
    assert 0 <= r['top1'] <= r['top5'] <= 1 and 0 <= r['top1_tta'] <= r['top5_tta'] <= 1
    assert r['params'] > 0 and r['device'].startswith('cpu') and r['wall_s'] > 0
    assert (tmp_path/'history.csv').read_text().count('\n') == 3

@pytest.mark.parametrize('kw,msg', [(dict(opt='lamb'), "unknown optimizer 'lamb'; use one of: adam, adamw, sgd"),
                                    (dict(sched='cosine'), "unknown schedule 'cosine'; use one of: stages, one"),
                                    (dict(tta='five'), "unknown tta 'five'; use one of: none, flip, aug"),
                                    (dict(mix='blend'), "unknown mix 'blend'")])
def test_new_settings_refused_before_data(tmp_path, kw, msg):
    with pytest.raises(PlanError, match=msg): train_recipe('demo', out=tmp_path/'out', data=tmp_path/'missing', **kw)
    assert not (tmp_path/'out').exists()

def test_presets_obey_the_rules():
    "Every recipe's model passes check_rules and its plan fits the 500-epoch limit"
    for name in ('demo', 'sprint', 'full'):
        r = resolve_plan(name)
        check_rules(get_arch(r.arch)())
        assert sum(r.epochs) <= 500

def test_long_run_features_resume_exactly(data, tmp_path):
    "The full recipe's loop (SGD, one cycle, MixCut, EMA, array cache) interrupted and resumed gives an uninterrupted run's metrics"
    kw = dict(data=data, arch='tiny', sizes=[16, 32], epochs=[1, 2], lrs=[0.05], bs=16, num_workers=0, seed=1, tta=False, device='cpu')   # a GPU preset on the CPU: asked for
    with pytest.raises(KeyboardInterrupt): train_recipe('full', out=tmp_path/'a', cbs=[StopAfterEpoch(2)], **kw)
    a = train_recipe('full', out=tmp_path/'a', **kw)
    b = train_recipe('full', out=tmp_path/'b', **kw)
    assert [h['run'] for h in a.history] == [1, 2, 2] and a.recipe['ema'] == get_recipe('full').ema   # epoch 2 had no checkpoint yet
    for h,g in zip(a.history, b.history):
        for k in METRICS: assert h[k] == pytest.approx(g[k], abs=1e-5), (h['epoch'], k)
    assert a.top1 == pytest.approx(b.top1, abs=1e-6)

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_epoch_saves_and_stops(data, tmp_path, sig):
    "Ctrl-C or SIGTERM: the epoch in progress finishes, the checkpoint is written, the run stops and resumes from there"
    kw = dict(data=data, sizes=[16, 32], epochs=[3, 1], lrs=[2e-3], bs=16, num_workers=0, seed=1, tta=False)
    with pytest.raises(KeyboardInterrupt, match='stopped after epoch 2'):
        train_recipe('demo', out=tmp_path, cbs=[SignalAt(sig, 1)], **kw)
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)    # handlers given back
    assert len(read_checkpoint(tmp_path/'models'/'ckpt.pth')['history']) == 2
    res = train_recipe('demo', out=tmp_path, **kw)
    assert [h['run'] for h in res.history] == [1, 1, 2, 2]


# ---------------------------------------------------------------- nothing silently wrong (issue 11)

def test_batch_larger_than_the_training_set_refused(data, tmp_path):
    "bs above the number of training images would train nothing (fastai drops the incomplete batch): refused, naming --bs"
    with pytest.raises(PlanError, match=r'batch size 256 is larger than the 100 training images.*--bs'):
        train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'bs': 256})
    assert not (tmp_path/'results.json').exists() and not (tmp_path/'model.pkl').exists()

def test_finished_run_run_again_changes_nothing(data, tmp_path):
    "The same command on a finished run keeps its results.json and model.pkl (no re-export at the first stage's size)"
    a = train_recipe('demo', out=tmp_path, data=data, **FAST)
    t,r = (tmp_path/'model.pkl').stat().st_mtime_ns,(tmp_path/'results.json').read_text()
    b = train_recipe('demo', out=tmp_path, data=data, **FAST)
    assert b.wall_s == a.wall_s and b.top1 == a.top1
    assert (tmp_path/'model.pkl').stat().st_mtime_ns == t and (tmp_path/'results.json').read_text() == r

def test_resume_with_other_data_refused(data, tmp_path):
    "A checkpoint trained on other images (same class names) is not resumed on these"
    other = make_subset(sample_path(), tmp_path/'other'/'tiny', n_classes=5, n_train=20, n_val=10, seed=0)
    import shutil; f = sorted((other/'train').rglob('*.JPEG'))[0]; shutil.copy(f, f.with_name('extra_0.JPEG'))
    with pytest.raises(KeyboardInterrupt): train_recipe('demo', out=tmp_path/'run', data=data, cbs=[StopAfterEpoch(2)], **{**FAST, 'epochs': [2, 1]})
    with pytest.raises(CheckpointError, match='data: checkpoint has'):
        train_recipe('demo', out=tmp_path/'run', data=other, **{**FAST, 'epochs': [2, 1]})

def test_finished_stages_keep_their_learning_rate(data, tmp_path):
    "Resuming with another --lr changes only the stages not yet finished; results.json records what was run"
    with pytest.raises(KeyboardInterrupt): train_recipe('demo', out=tmp_path, data=data, cbs=[StopAfterEpoch(1)], **FAST)
    res = train_recipe('demo', out=tmp_path, data=data, **{**FAST, 'lrs': [1e-3]})
    assert [s['lr'] for s in res.stages] == [2e-3, 1e-3] and [h['lr'] for h in res.history] == [2e-3, 1e-3]

def test_restart_removes_the_old_results_first(data, tmp_path):
    "--restart: a killed restart never leaves the old model and results beside the new checkpoint"
    train_recipe('demo', out=tmp_path, data=data, **FAST)
    with pytest.raises(KeyboardInterrupt): train_recipe('demo', out=tmp_path, data=data, restart=True, cbs=[StopAfterEpoch(1)], **FAST)
    assert not (tmp_path/'results.json').exists() and not (tmp_path/'model.pkl').exists()

def test_results_json_is_strict_json():
    from tiny_fastai.recipe import finite
    s = json.dumps(finite(dict(top1=float('nan'), h=[dict(l=float('inf'))], ok=0.5)), allow_nan=False)
    assert json.loads(s) == dict(top1=None, h=[dict(l=None)], ok=0.5)

def test_one_run_at_a_time_in_a_folder(data, tmp_path):
    "A second run into the same --out is refused, naming the process that holds it; temp files of live processes stay"
    import subprocess, sys, time
    holder = subprocess.Popen([sys.executable, '-c', f"from tiny_fastai.recipe import lock_run; lock_run({str(tmp_path)!r}); "
                               "print('locked', flush=True); import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        live = tmp_path/'models'/f'.ckpt.pth.{holder.pid}.tmp'; live.parent.mkdir(); live.write_bytes(b'x')
        dead = tmp_path/'models'/'.ckpt.pth.999999999.tmp'; dead.write_bytes(b'x')
        with pytest.raises(PlanError, match=f'another run \\(process {holder.pid}\\) is training into'):
            train_recipe('demo', out=tmp_path, data=data, **FAST)
    finally: holder.kill(); holder.wait()
    res = train_recipe('demo', out=tmp_path, data=data, **FAST)     # the holder is gone: this run takes the folder
    assert res.epochs == 2 and not dead.exists()   # the killed holder's temp file went too

def test_leftovers_of_killed_runs_removed(data, tmp_path):
    "Temporary files of killed processes (model.pkl, results.json, the checkpoint) and lr_find's temporary folder go at the next run"
    import subprocess, sys
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    (tmp_path/'models'/'tmpk1ll3d_x').mkdir(parents=True); (tmp_path/'models'/'tmpk1ll3d_x'/'_tmp.pth').write_bytes(b'x'*1000)
    left = [tmp_path/f'.model.pkl.{dead}.tmp', tmp_path/f'.results.json.{dead}.tmp', tmp_path/'models'/f'.ckpt.pth.{dead}.tmp']
    for f in left: f.write_bytes(b'x')
    live = tmp_path/f'.model.pkl.{os.getppid()}.tmp'; live.write_bytes(b'x')
    train_recipe('demo', out=tmp_path, data=data, **FAST)
    assert not any(f.exists() for f in left) and not (tmp_path/'models'/'tmpk1ll3d_x').exists() and live.exists()

def test_read_only_out_refused_before_data(tmp_path, monkeypatch):
    "An --out this user cannot write is refused at the start, before the data is read (not at the first checkpoint)"
    ro = tmp_path/'ro'; ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))   # as chmod 555 does (not for root)
    for out in (ro, ro/'new'):
        with pytest.raises(PlanError) as e: train_recipe('demo', out=out, data=tmp_path/'missing', **FAST)
        assert str(e.value) == f"--out {out} cannot be written ({ro} is read-only for this user): make it writable, or choose another --out"
    assert list(ro.iterdir()) == []

def test_incomplete_checkpoint_refused_by_the_recipe(data, tmp_path):
    "A checkpoint missing a part (here 'rng') is refused with one message naming it and --restart, before any training"
    ck = tmp_path/'models'/'ckpt.pth'; ck.parent.mkdir()
    torch.save(dict(format=CKPT_FORMAT, model={}, history=[], meta={}, vocab=[]), ck)
    with pytest.raises(CheckpointError) as e: train_recipe('demo', out=tmp_path, data=data, **FAST)
    assert str(e.value) == f"checkpoint {ck} is incomplete (missing 'rng'); run with --restart (or delete it) to start over"
    assert not (tmp_path/'history.csv').exists()

def test_size_too_large_refused():
    with pytest.raises(PlanError, match=r'stage 2: size 20000 px is above the limit of 512 px .*; use smaller --sizes'):
        resolve_plan('demo', sizes=[32, 20000])
