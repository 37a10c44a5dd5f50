"""The run's state has one owner: `RunProgress` (plan, position, learning rates, history) on `learn.run_progress`, saved
and restored by `Checkpoint`; `Results` is the schema of results.json; a budgeted `progressive_fit` chooses its epochs
from timing the loop, anneals to the end, validates at stage ends and resumes the plan it chose."""
import json, math, pytest, torch
from tiny_fastai.core import seed_everything, cpu_setup, cpu_cores
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.plan import Stage, Recipe
from tiny_fastai.checkpoint import RunProgress, read_checkpoint
from tiny_fastai.learner import tiny_learner
from tiny_fastai.fit import progressive_fit, time_steps
from tiny_fastai.recipe import Results


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_subset(sample_path(), tmp_path_factory.mktemp('data')/'tiny', n_classes=5, n_train=20, n_val=10)

def _dls(data, size=32, bs=16): return tiny_dls(data, size=size, bs=bs, num_workers=0, seed=0)


def test_run_progress_fields_and_state_roundtrip():
    p = RunProgress([Stage(16, 2, 1e-3), Stage(32, 3)], dict(arch='tiny', bs=16), stage=1, stage_epochs=2,
                    lrs=[1e-3, 5e-4], history=[dict(epoch=0), dict(epoch=1)], runs=2)
    assert (p.total_epochs, p.epochs_done, p.current) == (5, 2, None)   # not inside progressive_fit
    p.active = True
    assert p.current == Stage(32, 3) and p.lr == 5e-4
    sd = p.state_dict()
    assert sd['meta'] == dict(plan=[[16, 2], [32, 3]], arch='tiny', bs=16, lrs=[1e-3, 5e-4], stage=1, stage_epochs=2, runs=2)
    q = RunProgress([Stage(16, 2, 1e-3), Stage(32, 3)], dict(arch='tiny', bs=16)).load_state_dict(sd)
    assert (q.stage, q.stage_epochs, q.lrs, q.runs, q.history) == (1, 2, [1e-3, 5e-4], 2, p.history)
    assert q.identity() == p.identity() and not q.active


def test_learner_progress_is_the_one_record(data, tmp_path):
    "The history rows live in learn.run_progress, and the checkpoint saves exactly that"
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    progressive_fit(learn, [(16, 1, 2e-3), (32, 1, 2e-3)])
    p = learn.run_progress
    assert isinstance(p, RunProgress) and [(r['epoch'], r['stage'], r['size'], r['lr']) for r in p.history] == \
           [(0, 0, 16, 2e-3), (1, 1, 32, 2e-3)]
    st = read_checkpoint(learn.checkpoint.file)
    assert st['history'] == p.history and st['meta']['plan'] == [[16, 1], [32, 1]] and not p.active


def test_cpu_policy_reaches_python_users(data):
    "tiny_dls on the CPU applies cpu_setup: PyTorch's threads and the loader's workers split the cores"
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(7)
        dls = tiny_dls(data, size=32, bs=16, num_workers=1)
        assert torch.get_num_threads() == max(1, cpu_cores() - 1) and dls.train.num_workers == 1
    finally: torch.set_num_threads(old)


def test_loaders_do_not_reseed_the_process(data):
    "tiny_dls(seed=...) seeds the loaders' shuffling only: the process's RNG goes on as it was"
    seed_everything(5); a = torch.rand(3)
    seed_everything(5); _dls(data); b = torch.rand(3)
    assert torch.equal(a, b)
    d1, d2 = _dls(data), _dls(data)
    assert list(d1.train.get_idxs()) == list(d2.train.get_idxs())   # same seed: same shuffle


def test_results_schema_roundtrip(tmp_path):
    from tiny_fastai.plan import resolve_plan
    rec = resolve_plan('demo', sizes=[16], epochs=[1], lrs=[1e-3], budget='60s').to_dict()
    r = Results(rec, 1234, 0.5, 0.9, top1_tta=float('nan'), budget=dict(epochs=[1]), phases=dict(data=1.5))
    text = r.to_json()
    d = json.loads(text)
    assert d['top1_tta'] is None and d['version'] and d['budget']['epochs'] == [1] and d['recipe']['budget'] == 60.
    back = Results.from_json(text)
    assert back.stages == r.stages == [dict(size=16, epochs=1, lr=1e-3)] and back.params == 1234 and back.preset == 'demo'
    assert Recipe.from_dict(back.recipe) == resolve_plan('demo', sizes=[16], epochs=[1], lrs=[1e-3], budget='60s')   # the recipe, whole
    with pytest.raises(ValueError, match='fields this version does not know: shoe_size'):
        Results.from_json(json.dumps({**d, 'shoe_size': 44}), tmp_path/'results.json')
    with pytest.raises(ValueError, match='is not JSON'): Results.from_json('{', 'r.json')


def test_time_steps_leaves_the_learner_as_it_was(data, tmp_path):
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, ema=0.99)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    t = time_steps(learn, 32, n=2, n_valid=1, warmup=1)
    assert t['batch_s'] > 0 and t['valid_batch_s'] > 0 and t['size'] == 32
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    assert learn.run_progress.history == [] and not (tmp_path/'models'/'ckpt.pth').exists()
    assert type(learn.progress).__name__ in ('PlainProgress', 'ThrottledProgress')   # our bar, not fastai's put back


def test_budgeted_fit_chooses_epochs_validates_at_stage_ends_and_resumes_its_plan(data, tmp_path, monkeypatch):
    "The plan comes from the timings (here fixed, so that a busy machine does not change it; `time_steps` is tested above)"
    import time
    import tiny_fastai.fit as fit
    from tiny_fastai.plan import Stage
    monkeypatch.setattr(fit, 'time_steps', lambda learn, size, **kw: dict(size=size, batch_s=1.0, valid_batch_s=0.5, start_s=0., probe_s=0.))
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, ckpt_every=float('inf'))
    plan = [Stage(16, 1, 2e-3), Stage(32, 2, 2e-3)]
    config = dict(budget=[40, [[16, 1], [32, 2]]])
    # 40 s for training: what follows it (one val pass of 5 batches at 0.5 s, POST_S 3 s, EXIT_S 2 s) is added to the deadline
    dl = fit.fit_budget(learn, plan, time.time() + 40 + 5*0.5 + 3 + fit.EXIT_S, dict(passes=1, scale=1., post_s=3.), sched='one')
    dl.at += 3600   # the real epochs' speed must not change the plan here (a busy machine): `replan` is tested below
    progressive_fit(learn, dl.stages, sched='one', config=config, deadline=dl, valid_every=10**9)
    p = learn.run_progress
    b = p.budget
    assert b['train_s_planned'] <= b['train_s_left'] and [s.epochs for s in p.stages] == b['epochs']
    # 6 batches of 16 at 1 s + EPOCH_S an epoch, 5 val batches of 10 at 0.5 s and a checkpoint at each stage's end: 2+3 epochs fit 40 s, 2+4 do not
    assert b['epochs'] == [2, 3] and abs(b['train_s_planned'] - (5*(6 + fit.EPOCH_S) + 5 + 2*b['checkpoint_s'])) < 0.1
    assert len(p.history) == p.total_epochs >= 2 and sorted(t['size'] for t in b['timed']) == [16, 32]
    ends = {sum(s.epochs for s in p.stages[:i+1]) - 1 for i in range(len(p.stages))}
    for r in p.history:   # validated at each stage's end only: the other epochs have no valid numbers
        assert (r.get('top1') is not None) == (r['epoch'] in ends), r
        assert 0 < r['train_s'] <= r['time_s']
    assert p.history[-1]['lr'] == 2e-3 and math.isfinite(p.history[-1]['train_loss'])
    # the same run again: the checkpoint's plan is kept (no second timing), nothing is retrained
    learn2 = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    again = fit.resumed_plan(learn2, config)
    assert again == p.stages and fit.resumed_plan(learn2, dict(budget=[60, [[16, 1], [32, 2]]])) is None   # another budget: planned anew
    progressive_fit(learn2, again, sched='one', config=config)
    assert learn2.run_progress.stages == p.stages and learn2.run_progress.epochs_this_run == 0


def test_deadline_shortens_the_remaining_stages_when_epochs_run_slow(data, tmp_path, monkeypatch):
    "Epochs slower than timed: at the next stage's start the remaining epochs are cut to what the measured speed fits"
    import time
    import tiny_fastai.fit as fit
    from tiny_fastai.plan import Stage
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, ckpt_every=float('inf'))
    learn.run_progress.start([Stage(16, 2, 2e-3), Stage(32, 10, 2e-3)])
    learn.run_progress.history = [dict(epoch=i, size=16, time_s=4.0, run=1) for i in range(2)]   # timed at 1 s, ran at 4 s
    dl = fit.Deadline([], time.time() + 30, 2., epoch_s={16: 1., 32: 1.}, fixed_s={16: 0., 32: 0.}, record={})
    dl.replan(learn, 1)
    n = learn.run_progress.stages[1].epochs
    assert 1 <= n <= 7 and n*4 <= 28 and dl.record['replanned'][0]['ratio'] == 4.0   # 28 s left at 4 s an epoch


def test_recalibrate_bn_changes_statistics_not_weights(data, tmp_path):
    from tiny_fastai.evaluate import recalibrate_bn
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path)
    learn.fit(1, 1e-3)
    bn = [m for m in learn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    w = {k: v.clone() for k, v in learn.model.state_dict().items() if 'running' not in k and 'num_batches' not in k}
    before = bn[0].running_mean.clone()
    n = recalibrate_bn(learn, 48, n_batches=2)
    assert n == 32 and not torch.equal(before, bn[0].running_mean) and bn[0].momentum == 0.1
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in w.items())


def test_train_recipe_tests_at_another_size(data, tmp_path):
    from tiny_fastai.recipe import train_recipe
    res = train_recipe('demo', out=tmp_path, data=data, sizes=[16, 24], epochs=[1, 1], lrs=[2e-3], bs=16, tta=False, test_size=32)
    assert res.test_size == 32 and 0 <= res.top1 <= 1
    assert json.loads((tmp_path/'model.json').read_text())['size'] == 32   # predict uses the size it was tested at


def test_signal_during_the_epochs_end_still_saves(data, tmp_path, monkeypatch):
    "A SIGTERM that lands while the checkpoint callback ends an epoch (here: while it writes history.csv) stops after a save, never without one"
    import signal
    import tiny_fastai.checkpoint as ck_mod
    learn = tiny_learner(_dls(data), 'tiny', path=tmp_path, ckpt_every=float('inf'))
    real = ck_mod.history_csv
    def csv_then_signal(h):
        learn.checkpoint.stop = signal.SIGTERM   # as the handler would set it, between the save decision and the stop
        return real(h)
    monkeypatch.setattr(ck_mod, 'history_csv', csv_then_signal)
    learn.checkpoint._catch_signals = lambda: None
    with pytest.raises(KeyboardInterrupt) as e: learn.fit(4, 1e-3)
    assert e.value.signum == signal.SIGTERM and learn.checkpoint.file.exists()
