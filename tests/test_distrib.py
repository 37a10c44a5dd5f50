"""Distributed data-parallel training on CPU (gloo) under `torchrun`: the pieces of `tiny_fastai.distrib` with 2 processes
(`tests/distrib_worker.py`), and the `tiny-fastai train` demo run by `torchrun --nproc_per_node=2 --no-python`."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

from conftest import venv_bin as _bin   # the console scripts of this Python's environment

def _torchrun(args, cwd, timeout=600):
    "Run `torchrun --standalone --nproc_per_node=2 ARGS` (a free port, so that parallel test runs do not collide)"
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore')
    try:
        return subprocess.run([_bin('torchrun'), '--standalone', '--nproc_per_node=2', *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank waiting for the other?):\n{(e.stdout or b'')[-3000:]}")

def _close(a, b, tol=1e-5): return abs(a - b) <= tol

def _one_cycle_lr(lr_max, pct, pct_start=0.25, div_final=1e5):
    "fastai's `fit_one_cycle` learning rate at `pct` of training, after warm-up (cosine annealing to lr_max/div_final)"
    pos = (pct - pct_start)/(1 - pct_start)
    end = lr_max/div_final
    return lr_max + (1 + math.cos(math.pi*(1 - pos)))*(end - lr_max)/2

@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('distrib')
    r = _torchrun([str(ROOT/'tests'/'distrib_worker.py'), str(out), '--data'], cwd=out)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return [json.loads((out/f'rank{i}.json').read_text()) for i in range(2)]

def test_setup(ranks):
    "Two processes join one gloo group on CPU; `distrib_training` swaps in our trainer and metrics, and puts fastai's back"
    for i,r in enumerate(ranks):
        assert (r['rank'], r['world_size'], r['backend'], r['device']) == (i, 2, 'gloo', 'cpu')
        assert r['trainer'] == ['DistribTrainer']
        assert r['metric_types'] == ['DistribMetric']*2 and r['metric_types_after'] == ['AvgMetric']*2
    assert ranks[0]['rank0_first'] == 0 and ranks[1]['rank0_first'] == 1

def test_lr_find_leaves_ranks_equal(ranks):
    "After `lr_find` every rank has its model and optimizer of before (fastai restores rank 0 only) and the same suggestion"
    a,b = ranks[0]['after_lr_find'],ranks[1]['after_lr_find']
    assert a == b
    assert a['opt'] == 0.0 and a['bn'] == ['BatchNorm1d']   # fresh optimizer state; no SyncBatchNorm left (CPU)
    assert ranks[0]['lr'] == ranks[1]['lr']

def test_schedule_runs_to_its_end(ranks):
    "Each rank makes as many batches as `len(dl)` says (68 items, bs 8, drop_last: 8), so the one-cycle schedule ends"
    for r in ranks:
        assert r['n_batches'] == [17, 16]      # 136//8 batches undivided; 2 epochs of 8 batches per rank
        want = _one_cycle_lr(r['lr_max'], 15/16)
        assert math.isclose(r['last_lr'], want, rel_tol=1e-4), (r['last_lr'], want)

def test_same_model_on_every_rank(ranks):
    assert ranks[0]['params'] == ranks[1]['params']
    assert ranks[0]['recorded'] == ranks[1]['recorded']

def test_epoch_metrics_cover_val_once(ranks):
    "51 val items on 2 ranks (one padded): the last epoch's valid loss and accuracy are those of the whole val set, once each"
    for r in ranks:
        train_loss,valid_loss,acc,err = r['recorded'][-1]
        plain_loss,plain_acc,plain_err = r['plain_validate']       # single-process fastai on the same model
        assert _close(valid_loss, plain_loss) and _close(acc, plain_acc) and _close(err, plain_err)

def test_get_preds_all(ranks):
    "The whole val set, once each and in dataset order, inside and outside `distrib_training`, on every rank"
    for r in ranks:
        p,t = r['plain']
        assert len(t) == 51
        for q,u in (r['inside'], r['outside']):
            assert u == t
            assert max(abs(x - y) for a,b in zip(p, q) for x,y in zip(a, b)) < 1e-5
        assert r['evaluate']['n_valid'] == 51
        assert _close(r['evaluate']['top1'], sum(max(range(3), key=a.__getitem__) == y for a,y in zip(p, t))/51)

def test_nan_on_one_rank_stops_all(ranks):
    "A NaN loss on rank 1 only stops both ranks at the same batch (a rank that stopped alone would leave the other hanging)"
    assert ranks[0]['nan_stop'] == ranks[1]['nan_stop'] == [0, 3]

def test_rank0_error_reaches_all(ranks):
    assert ranks[0]['on_rank0_error'] == ranks[1]['on_rank0_error'] == 'division by zero'

@pytest.mark.parametrize('loader', ['datablock', 'fast'])
def test_loaders(ranks, loader):
    "The `DataBlock` loader of `tiny_dls` and the array loader of `tiny_dls(cache=True)` train and predict under `DistribDL`"
    d0,d1 = [r['data'][loader] for r in ranks]
    assert d0['params'] == d1['params']
    for d in (d0, d1):
        assert (d['n_train'], d['n_valid'], d['batches']) == (1000, 500, 20)   # one epoch: 500 train items a rank, bs 24
        assert d['targs_in_order'] and d['max_diff'] < 1e-5
        assert _close(d['recorded_acc'], d['plain_acc'])
    if loader == 'datablock':
        assert d0['evaluate'] == d1['evaluate']
        assert d0['evaluate']['n_valid'] == 500 and _close(d0['evaluate']['top1'], d0['plain_acc'])
        assert 0 <= d0['evaluate']['top1_tta'] <= 1

def test_recipe_uses_distrib():
    """The CLI's path runs through tiny_fastai.distrib: train_recipe trains under `distrib_training`, `evaluate` gathers with
    `get_preds_all`, `progressive_fit` reads the checkpoint on rank 0 (the torchrun test below checks it end to end)"""
    import inspect
    import tiny_fastai.distrib as D, tiny_fastai.fit as fit, tiny_fastai.evaluate as ev, tiny_fastai.recipe as rc
    uses = [(rc, 'train_recipe', ('init_distrib', 'distrib_training', 'rank0_first', 'local_bs', 'no_gather')),
            (ev, 'evaluate', ('get_preds_all',)), (fit, 'progressive_fit', ('on_rank0',))]
    for mod,fn,names in uses:
        src = inspect.getsource(getattr(mod, fn))
        for n in names:
            assert getattr(mod, n) is getattr(D, n), f"{mod.__name__}.{n} is not tiny_fastai.distrib.{n}"
            assert f'{n}(' in src, f"{mod.__name__}.{fn} no longer calls tiny_fastai.distrib.{n}"

def test_cli_demo_torchrun(tmp_path):
    "`torchrun --nproc_per_node=2 --no-python tiny-fastai train` on CPU finishes; rank 0 alone writes complete results"
    out = tmp_path/'run'
    r = _torchrun(['--no-python', _bin('tiny-fastai'), 'train', '--out', str(out), '--epochs', '1,1', '--sizes', '16,32',
                   '--lr', 'find,3e-3', '--sched', 'stages'], cwd=tmp_path)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    res = json.loads((out/'results.json').read_text())
    assert (res['world_size'], len(res['history']), res['n_train'], res['n_valid']) == (2, 2, 1000, 500)
    assert res['recipe']['bs'] == 64 and res['bs_per_process'] == 32
    assert [(h['epoch'], h['size']) for h in res['history']] == [(0, 16), (1, 32)]
    for k in ('top1', 'top5', 'top1_tta', 'top5_tta'): assert 0 <= res[k] <= 1, k
    # the last epoch's val top-1 (exact per-epoch metric) and the final evaluation (get_preds_all) score the same model
    # at the same size on the same 500 images
    assert _close(res['history'][-1]['top1'], res['top1'], 1e-4)
    assert res['recipe']['stages'][0][2] > 0 and res['recipe']['stages'][1][2] == 3e-3
    assert {'model.pkl', 'history.csv', 'history.png', 'lr_find_1_16px.png', 'results.json'} <= set(res['files'])
    assert sorted(p.name for p in (out/'models').iterdir()) == ['ckpt.pth']   # no lr_find temporaries left by any rank
    assert not [p for p in out.rglob('*.tmp')]
    assert r.stdout.count('| top-1 |') == 1                                 # printed by rank 0 only
