"""tiny_fastai.learner (in-process, on a 5-class slice of the bundled sample, CPU): PyTorch's optimizers with weight decay
on conv weights only, one cycle across stages, MixCut, EMA, flip TTA, compiled models, throttled checkpoints and signal
handlers; `find_max_bs` (its search, the CPU fallback, and on a GPU the largest batch with the model left untouched)."""
import errno, os, signal, pytest, torch
from pathlib import Path
from fastai.vision.all import (Callback, CancelFitException, OptimWrapper, combined_cos, Learner, CrossEntropyLossFlat)
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.checkpoint import read_checkpoint, CheckpointError, CKPT_FORMAT
from tiny_fastai.learner import tiny_learner, get_opt, wd_splitter, compile_model, top1, find_max_bs
from tiny_fastai.learner import _largest
from tiny_fastai.fit import progressive_fit, cycle_slice
from tiny_fastai.evaluate import evaluate
from tiny_fastai.callbacks import MixCut, EMA, apply_ema, HFlip
from tiny_fastai.infer import export_learner, load_model_file
from conftest import StopAfterEpoch   # the callback that interrupts a run, shared with test_recipe.py

@pytest.fixture(scope='module')
def sample_dls():
    "Loaders on the bundled sample (10 classes, batch 32)"
    return (tiny_dls(sample_path(), bs=32, num_workers=0, seed=0),)

def _dls(data, size=32, bs=16): return tiny_dls(data, size=size, bs=bs, num_workers=0, seed=0)

def test_torch_optimizers_skip_wd_on_norms_and_biases(data):
    "opt='sgd'/'adamw': PyTorch's optimizer through OptimWrapper, weight decay on conv weights only, driven by fastai's schedule"
    for opt,cls in (('sgd', torch.optim.SGD), ('adamw', torch.optim.AdamW)):
        learn = tiny_learner(_dls(data), 'tiny', opt=opt, wd=1e-3, checkpoint=None)
        learn.fit_one_cycle(1, 0.05)
        assert isinstance(learn.opt, OptimWrapper) and isinstance(learn.opt.opt, cls)
        g0,g1 = learn.opt.opt.param_groups
        assert g0['weight_decay'] == 1e-3 and g1['weight_decay'] == 0
        assert all(p.ndim == 4 for p in g0['params']) and all(p.ndim == 1 for p in g1['params'])
        assert g0['lr'] < 0.05/2 and learn.opt.hypers[0]['mom'] > 0.85   # fastai's one-cycle drives lr and momentum
    assert get_opt('adam').__name__ == 'Adam'

def test_one_cycle_across_stages_is_fit_one_cycles_schedule(data, tmp_path):
    "sched='one': the learning rates of all stages, batch after batch, are those of one fit_one_cycle over all epochs"
    learn = tiny_learner(_dls(data), 'tiny', opt='sgd', path=tmp_path)
    progressive_fit(learn, [(16,1,0.1),(32,2,0.1)], sched='one', pct_start=0.3)
    lrs = learn.recorder.lrs                       # the last stage's
    n = len(lrs)//2                                # batches per epoch
    f = combined_cos(0.3, 0.1/25, 0.1, 0.1/1e5)
    expect = [f((n + i)/(3*n)) for i in range(2*n)]
    assert lrs == pytest.approx(expect, rel=1e-6)
    assert [h['lr'] for h in learn.run_progress.history] == [0.1, 0.1, 0.1]

def test_mixcut(data):
    "MixCut mixes each batch with MixUp or CutMix and stops mixing for the last `off` of training"
    learn = tiny_learner(_dls(data), 'tiny', checkpoint=None)
    b = learn.dls.one_batch()
    for p_cut,off in ((1., 0.), (0., 0.), (1., 1.)):
        cb = MixCut(p_cut=p_cut, off=off)
        learn.xb,learn.yb = (b[0].clone(),),(b[1],)
        learn.pct_train,learn.iter,learn.n_iter = 0.,0,1
        cb.learn = learn; cb.stack_y = True
        cb.before_batch()
        x = learn.xb[0]
        if off == 1.: assert torch.equal(x, b[0]) and float(cb.lam) == 1.
        elif p_cut == 1.:
            changed = (x != b[0]).any(1)                                # pixels taken from other images: one box
            ys,xs = changed.any(0).any(1).nonzero(),changed.any(0).any(0).nonzero()
            if len(ys): assert changed.any(0)[ys.min():ys.max()+1, xs.min():xs.max()+1].float().mean() > 0.5
            assert 0 <= float(cb.lam) <= 1
        else: assert not torch.equal(x, b[0]) and cb.lam.shape == (len(x),) and (cb.lam >= 0.5).all() and (cb.lam <= 1).all()

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_mixcut_never_waits_for_the_gpu():
    "On a GPU, neither MixUp nor CutMix makes the host wait for the device (PyTorch's sync debug mode raises if one does)"
    x,y = torch.randn(64, 3, 32, 32, device='cuda'),torch.randint(0, 10, (64,), device='cuda')
    class L: pass
    learn = L(); learn.x,learn.y,learn.xb,learn.yb,learn.pct_train,learn.iter,learn.n_iter = x,y,(x,),(y,),0.,0,1
    for p_cut in (0., 1.):
        cb = MixCut(p_cut=p_cut); cb.learn = learn; cb.stack_y = True
        torch.cuda.synchronize(); torch.cuda.set_sync_debug_mode('error')
        try: cb.before_batch()
        finally: torch.cuda.set_sync_debug_mode(0)

def test_ema_validates_exports_and_resumes(data, tmp_path):
    "EMA: validation scores the averaged weights; apply_ema puts them in the model; the checkpoint keeps the average"
    learn = tiny_learner(_dls(data), 'tiny', ema=0.9, path=tmp_path)
    learn.fit_one_cycle(2, 3e-3)
    ema = learn.ema
    assert ema.n == 2*len(learn.dls.train)
    live = [p.detach().clone() for p in learn.model.parameters()]
    v = learn.validate()
    assert all(torch.equal(a, b) for a,b in zip(live, learn.model.parameters()))   # swapped back after validating
    st = read_checkpoint(learn.checkpoint.file)['ema']
    assert st['n'] == ema.n and all(torch.equal(a, b) for a,b in zip(st['avg'], ema.avg))
    apply_ema(learn)
    assert not hasattr(learn, 'ema') and all(torch.equal(p.data, a) for p,a in zip(learn.model.parameters(), st['avg']))
    assert learn.validate()[1] == pytest.approx(v[1])

def test_flip_tta(data):
    "tta='flip' averages the predictions for the images and their mirror images"
    learn = tiny_learner(_dls(data), 'tiny', checkpoint=None)
    learn.fit(1, 1e-3)
    p,t = learn.get_preds()
    pf,_ = learn.get_preds(cbs=[HFlip()])
    r = evaluate(learn, tta='flip')
    assert r['top1_tta'] == pytest.approx(top1((p+pf)/2, t).item()) and r['top1'] == pytest.approx(top1(p, t).item())
    assert not torch.allclose(p, pf)

def test_compile_model_same_outputs_and_exportable(data, tmp_path):
    "compile_model keeps the model's outputs and state_dict; a learner with a compiled model exports and loads"
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(2, 3, 8, 8)
    ref = m(x)
    compile_model(m)
    assert torch.allclose(m(x), ref, atol=1e-6) and list(m.state_dict()) == ['0.weight', '0.bias']
    learn = tiny_learner(_dls(data), 'tiny', compile=True, checkpoint=None)
    export_learner(learn, tmp_path/'m.pkl')
    assert learn.model._compiled_call_impl is not None                   # still compiled after the export
    assert len(load_model_file(tmp_path/'m.pkl').dls.vocab) == 5

def test_checkpoints_throttled_but_always_at_the_end(data, tmp_path):
    "With every_s large, only the end of a fit writes the checkpoint; history.csv follows every epoch"
    learn = tiny_learner(_dls(data), 'tiny', ckpt_every=1e9, path=tmp_path)
    with pytest.raises(KeyboardInterrupt): learn.fit(3, 1e-3, cbs=StopAfterEpoch(2))
    assert not learn.checkpoint.file.exists() and (tmp_path/'history.csv').read_text().count('\n') == 3
    learn.fit(2, 1e-3)
    assert len(read_checkpoint(learn.checkpoint.file)['history']) == 4

def test_stale_signal_handler_steps_aside(data, tmp_path):
    "After a fit that ended in an exception, Ctrl-C outside a fit interrupts at once as usual"
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    with pytest.raises(KeyboardInterrupt): learn.fit(2, 1e-3, cbs=StopAfterEpoch(1))
    with pytest.raises(KeyboardInterrupt): os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- find_max_bs

def test_largest_search():
    tried = []
    def fits(b): tried.append(b); return b <= 1000
    assert _largest(fits, 64, 8192) == 1000 and len(tried) < 15
    assert _largest(lambda b: b <= 1000, 64, 512) == 512
    assert _largest(lambda b: b <= 5, 64, 512) == 0
    assert _largest(lambda b: b <= 100, 256, 4096) == 96
    assert _largest(lambda b: b <= 77, 8, 4096, multiple=1) == 77


def test_find_max_bs_cpu(sample_dls):
    from tiny_fastai.models import get_arch
    learn = Learner(sample_dls[0], get_arch('tiny')(n_out=10), loss_func=CrossEntropyLossFlat())
    with pytest.warns(UserWarning, match='not a GPU'): assert find_max_bs(learn, 64) == 32
    with pytest.warns(UserWarning, match='not a GPU'): assert find_max_bs(learn, 64, cpu_bs=100) == 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_find_max_bs_gpu(sample_dls):
    from tiny_fastai.models import get_arch
    learn = Learner(sample_dls[0], get_arch('tiny')(n_out=10), loss_func=CrossEntropyLossFlat()).to('cuda')
    w = [p.detach().clone() for p in learn.model.state_dict().values()]
    bs = find_max_bs(learn, 64, max_bs=1024)
    assert bs % 8 == 0 and 8 <= bs <= 1024
    assert all(torch.equal(a, b) for a,b in zip(w, learn.model.state_dict().values()))   # weights and statistics untouched
    assert all(p.grad is None for p in learn.model.parameters())

def test_checkpoint_is_data_only(data, tmp_path):
    "Checkpoints load with weights_only=True; a pickle placed as the checkpoint is refused without running its code"
    learn = tiny_learner(_dls(data), 'tiny', opt='sgd', ema=0.9, path=tmp_path)
    learn.fit_one_cycle(1, 1e-2)
    st = torch.load(learn.checkpoint.file, weights_only=True)
    assert st['history'] and st['ema']['avg'] and isinstance(st['rng']['numpy_state'][1], torch.Tensor)
    import pickle
    class Evil:
        def __reduce__(self): return (os.system, (f"touch {tmp_path/'pwned'}",))
    learn.checkpoint.file.write_bytes(pickle.dumps({'format': CKPT_FORMAT, 'x': Evil()}))
    with pytest.raises(CheckpointError, match='would run code'): read_checkpoint(learn.checkpoint.file)
    assert not (tmp_path/'pwned').exists()


# ---------------------------------------------------------------- a full disk, an incomplete checkpoint

_FULL = [RuntimeError('[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed'),
         RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1368'),
         OSError(errno.ENOSPC, 'No space left on device')]

@pytest.mark.parametrize('err', _FULL, ids=['file write failed', 'unexpected pos', 'ENOSPC'])
def test_full_disk_during_checkpoint_and_export(data, tmp_path, monkeypatch, err):
    "A disk that fills while the checkpoint or the exported model is written: one line naming the file; the previous file stays good"
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    learn.fit(1, 1e-3)
    ck, model = learn.checkpoint.file, export_learner(learn, tmp_path/'model.pkl')
    real = torch.save
    def save(obj, f, *args, **kwargs):   # half a file, then the error a full disk gives
        if isinstance(f, (str, os.PathLike)): Path(f).write_bytes(b'half a file')
        else: f.write(b'half a file')
        raise err
    monkeypatch.setattr(torch, 'save', save)
    for run,f in ((lambda: learn.fit(1, 1e-3), ck), (learn.checkpoint.save, ck), (lambda: export_learner(learn, model), model)):
        with pytest.raises(OSError) as e: run()
        msg = str(e.value)
        assert e.value.errno == errno.ENOSPC and '\n' not in msg, msg
        assert msg.startswith(f'no space left on device: writing {f} failed (') and f'; the previous {f.name} is kept' in msg, msg
    monkeypatch.setattr(torch, 'save', real)
    assert len(read_checkpoint(ck)['history']) == 1 and len(load_model_file(model).dls.vocab) == 5
    assert not [p for p in tmp_path.rglob('*.tmp')]

def test_incomplete_checkpoint_refused(data, tmp_path):
    "A checkpoint that lacks a part a resume needs is refused naming it, not a KeyError"
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    learn.fit(1, 1e-3)
    st = read_checkpoint(learn.checkpoint.file); del st['rng']
    torch.save(st, learn.checkpoint.file)
    with pytest.raises(CheckpointError) as e: progressive_fit(learn, [(32, 2, 1e-3)])
    assert str(e.value) == f"checkpoint {learn.checkpoint.file} is incomplete (missing 'rng'); run with --restart (or delete it) to start over"

def test_pictures_on_a_full_disk(data, tmp_path, monkeypatch):
    "history.png (and every picture saved with save_figure) on a full disk: the clear error, the old picture kept, no temp file"
    import errno, matplotlib.figure
    from tiny_fastai.evaluate import plot_history
    from tiny_fastai.files import DiskFullError
    h = [dict(epoch=i, stage=0, size=16, train_loss=1., valid_loss=1., top1=.5, top5=.9, time_s=1.) for i in range(2)]
    f = plot_history(h, tmp_path/'history.png'); before = (tmp_path/'history.png').read_bytes()
    def full(self, fname, **kw): open(fname, 'wb').write(b'x'); raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', full)
    with pytest.raises(DiskFullError, match='no space left on device') as e: plot_history(h, tmp_path/'history.png')
    assert 'history.png' in str(e.value) and (tmp_path/'history.png').read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['history.png']
    import matplotlib.pyplot as plt
    assert not plt.get_fignums()   # the figure is closed although saving failed

def test_out_of_memory_names_the_settings(data, tmp_path):
    "Out of memory in a stage (GPU or CPU allocator): one PlanError naming the size, the batch size, --bs and --sizes"
    from tiny_fastai.plan import PlanError
    for msg in ('CUDA out of memory. Tried to allocate 2.00 GiB', "DefaultCPUAllocator: can't allocate memory: you tried to allocate 307200000000 bytes"):
        learn = tiny_learner(tiny_dls(data, size=16, bs=8, num_workers=0, seed=0), 'tiny', path=tmp_path/'r')
        def boom(m, a): raise RuntimeError(msg)
        learn.model.register_forward_pre_hook(boom)
        with pytest.raises(PlanError, match=r'out of memory at 32 px with a batch size of 8: lower the batch size \(--bs\) or the stage sizes \(--sizes\)'):
            progressive_fit(learn, [(32, 1, 1e-3)], resume=False)
    learn = tiny_learner(tiny_dls(data, size=16, bs=8, num_workers=0, seed=0), 'tiny', path=tmp_path/'r')
    learn.model.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError('something else')))
    with pytest.raises(RuntimeError, match='something else'): progressive_fit(learn, [(32, 1, 1e-3)], resume=False)

def test_one_cycle_finds_one_learning_rate(data, tmp_path, monkeypatch):
    "sched='one': lr_find runs for the first stage only (its peak serves all); different rates per stage are refused"
    from fastai.learner import Learner
    from tiny_fastai.plan import PlanError
    calls, real = [], Learner.lr_find
    monkeypatch.setattr(Learner, 'lr_find', lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    learn = tiny_learner(_dls(data, size=16, bs=8), 'tiny', path=tmp_path/'a')
    progressive_fit(learn, [(16, 1, None), (32, 1, None)], sched='one', lr_find_kw=dict(num_it=10))
    assert len(calls) == 1 and learn.run_progress.lrs[0] == learn.run_progress.lrs[1]
    learn = tiny_learner(_dls(data, size=16, bs=8), 'tiny', path=tmp_path/'b')
    with pytest.raises(PlanError, match="sched 'one' runs one cycle"): progressive_fit(learn, [(16, 1, 1e-3), (32, 1, 2e-3)], sched='one')


# ---------------------------------------------------------------- the loop's cost on the host

def test_events_reach_only_the_callbacks_that_define_them(data, tmp_path, monkeypatch):
    """tiny_learner's events go only to the callbacks that define them (fastai's `Learner` calls every callback for every
    event); callbacks added for a fit, by lr_find or with add_cb are reached at once; `run` is still reset after a fit"""
    from fastai.callback.core import Callback as CB
    calls, real = [], CB.__call__
    monkeypatch.setattr(CB, '__call__', lambda self, e: calls.append((type(self).__name__, e)) or real(self, e))
    class Count(Callback):
        def __init__(self): self.n = 0
        def before_batch(self): self.n += 1
    class Off(Callback):
        def before_fit(self): self.run = False   # fastai puts it back to True after the fit
        def before_batch(self): raise AssertionError('not run')
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, checkpoint=None, opt='sgd')
    c, off = Count(), Off()
    learn.add_cb(off)
    learn.fit(1, 1e-3, cbs=c)
    n_batches = len(learn.dls.train) + len(learn.dls.valid)
    assert c.n == n_batches and off.run and c not in learn.cbs
    per_batch = [n for n, e in calls if e in ('after_pred', 'after_loss', 'before_backward', 'after_backward', 'before_step', 'after_step')]
    assert per_batch == [], set(per_batch)   # no callback of tiny_learner defines them: nobody is called
    assert {n for n, e in calls if e == 'before_batch'} == {'CastToTensor', 'Count', 'Off'}
    assert {n for n, e in calls if e == 'after_fit'} >= {'Count', 'Off', 'Recorder', 'NaNGuard'}   # every callback
    learn.remove_cb(off); calls.clear()
    learn.fit(1, 1e-3)
    assert 'Off' not in {n for n, _ in calls} and 'Count' not in {n for n, _ in calls}
    sug = learn.lr_find(num_it=5, show_plot=False)
    assert len(learn.recorder.lrs) >= 2 and sug.valley > 0 and not hasattr(learn, 'lr_finder')
    assert learn.ordered_cbs('before_batch') == [learn.cast_to_tensor]


def test_smooth_cross_entropy_keeps_fastais_loss_api(data, tmp_path):
    "The loss is F.cross_entropy(label_smoothing=...), equal to fastai's LabelSmoothingCrossEntropyFlat; get_preds with "
    "decoded outputs and losses, predict and ClassificationInterpretation work as with fastai's"
    from fastai.vision.all import LabelSmoothingCrossEntropyFlat, ClassificationInterpretation
    from tiny_fastai.learner import SmoothCrossEntropy
    x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(SmoothCrossEntropy(0.1)(x, y), LabelSmoothingCrossEntropyFlat(eps=0.1)(x, y), atol=1e-6)
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, checkpoint=None, mix='mixup')
    assert isinstance(learn.loss_func, SmoothCrossEntropy) and learn.loss_func.eps == 0.1
    learn.fit(1, 1e-3)
    assert learn.loss_func.reduction == 'mean'   # MixUp put it back
    p, t, d, l = learn.get_preds(with_decoded=True, with_loss=True)
    assert torch.equal(d, p.argmax(1)) and l.shape == t.shape and torch.allclose(p.sum(1), torch.ones(len(p)))
    cls, idx, probs = learn.predict(learn.dls.valid_ds.items[0])
    assert cls in learn.dls.vocab and abs(float(probs.sum()) - 1) < 1e-5
    ClassificationInterpretation.from_learner(learn).most_confused()


def test_schedule_table_is_fastais_schedule(data, tmp_path):
    "ScheduleTable gives the batches the learning rates and momenta fastai's ParamScheduler gives, also when resuming at an epoch"
    from fastai.vision.all import ParamScheduler
    from tiny_fastai.callbacks import ScheduleTable
    got = {}
    for cls in (ParamScheduler, ScheduleTable):
        for start in (0, 1):
            learn = tiny_learner(_dls(data), 'tiny', path=tmp_path/cls.__name__/str(start), checkpoint=None, opt='sgd')
            learn.fit(3, start_epoch=start, cbs=cls(cycle_slice(0.1, 0.2, 0.9, pct_start=0.3)))
            got[cls, start] = learn.recorder.hps, learn.recorder.lrs, [g['momentum'] for g in learn.opt.opt.param_groups]
    for start in (0, 1):
        (ha, la, ma), (hb, lb, mb) = got[ParamScheduler, start], got[ScheduleTable, start]
        assert la == pytest.approx(lb, rel=1e-12) and ha['mom'] == pytest.approx(hb['mom'], rel=1e-12) and ma == mb
        assert len(lb) == (3 - start)*len(_dls(data).train)


def test_nan_found_from_the_smoothed_loss(data, tmp_path):
    "NaNGuard reads the smoothed loss every `every` batches and at the epoch's end: a NaN at batch 2 is found at batch 4"
    from tiny_fastai.callbacks import NaNGuard, NanLossError
    class Poison(Callback):
        def after_loss(self):
            if self.training and self.iter >= 1: self.learn.loss_grad = self.learn.loss = self.loss_grad*float('nan')
    learn = tiny_learner(_dls(data, bs=8), 'tiny', path=tmp_path, cbs=Poison())
    learn.na_n_guard.every = 4
    with pytest.raises(NanLossError, match=r'became nan in epoch 1 \(found at batch 4\).*no epoch had completed'): learn.fit(1, 1e-3)
