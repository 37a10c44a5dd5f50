"""bench/gpu.py on the CPU: the one-command GPU measurement runs every step end to end on the bundled sample in seconds
(`--quick`), and leaves its figures in OUT; every other script of bench/ (but depthwise.py, in test_bench_models.py)
runs its `--quick` mode in seconds on the bundled sample and writes sane numbers."""
import importlib.util, json, pytest
from pathlib import Path
from tiny_fastai.data import sample_path

ROOT = Path(__file__).resolve().parents[1]

def _gpu_bench():
    spec = importlib.util.spec_from_file_location('gpu_bench', ROOT/'bench'/'gpu.py')
    gb = importlib.util.module_from_spec(spec); spec.loader.exec_module(gb)   # in this process: no second import of fastai
    return gb

def test_gpu_bench_quick_on_cpu(tmp_path):
    "Every step runs and is reported; the full recipe trains the epochs asked for (fixed epochs and steps: no time limit to run out)"
    out = tmp_path/'out'
    rep = _gpu_bench().main([str(sample_path()), '--out', str(out), '--quick', '--workers', '0', '--work-dir', str(tmp_path/'w')])
    d = json.loads((out/'gpu_bench.json').read_text())
    assert d['status'] == 'done' and 'full_error' not in d and d['sections'] == rep.sections
    st = d['sections']
    assert set(st) == {'1. data', '2. training images/s, fed from tensors on the device', '2b. the real loader alone',
                       '3. the full recipe, end to end', '4. torch.compile'}
    assert st['1. data'][0]['n_train'] == QUICK_TRAIN and st['1. data'][0]['n_valid'] == QUICK_VALID
    speed = st['2. training images/s, fed from tensors on the device']
    assert len(speed) == 3 and all(r['ips'] > 0 and r['params'] > 0 for r in speed)
    assert [r['size'] for r in st['2b. the real loader alone']] == [16, 32] and all(r['ips'] > 0 for r in st['2b. the real loader alone'])
    assert [(r['epoch'], r['size']) for r in st['3. the full recipe, end to end']] == [(1, 16), (2, 32)]
    assert 0 <= d['full_top1'] <= 1 and d['full_projected_hours'] > 0 and d['full_projection'].startswith('40 x 16 px, 80 x 32 px: ')
    md = (out/'gpu_bench.md').read_text()
    assert '## 3. the full recipe, end to end' in md and 'compiled: skipped, no GPU' in md

def test_projected_hours():
    "The last epoch at each size is the steady state, the first epoch's excess is paid once; a size that did not run says so"
    h = [dict(size=32, time_s=40.), dict(size=32, time_s=10.), dict(size=64, time_s=50.), dict(size=64, time_s=20.)]
    hours,how = _gpu_bench().projected_hours(h, [(32, 100), (64, 200)])
    assert hours == round((100*10 + 200*20 + 30 + 30)/3600, 2) and 'compiling' in how
    assert _gpu_bench().projected_hours(h, [(48, 1)]) == (None, 'no epoch ran at 48 px')


# ---------------------------------------------------------------- every other script of bench/ in its --quick mode
def _bench(name):
    "bench/NAME.py as a module, in this process (no second import of fastai)"
    spec = importlib.util.spec_from_file_location(f'{name}_bench', ROOT/'bench'/f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

@pytest.fixture(autouse=True)
def _keep_threads():
    import torch
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)   # some scripts set their own

QUICK_TRAIN,QUICK_VALID = 5*20,5*10   # bench/common.py's QUICK_SUBSET of the bundled sample

def test_ablation_quick(tmp_path):
    "Every row trains (2 stages of 1 epoch) with what its label says: Adam or SGD, MixCut from (d) on, EMA in (e) only"
    ab = _bench('ablation')
    res = ab.main(['--quick', '--json', str(tmp_path/'abl.json')])
    assert set(res) == {(k, 42) for k in 'abcde'}
    for (k,_),r in res.items():
        assert 0 <= r['top1'] <= 1 and 0 <= r['top1_flip'] <= 1 and 0 <= r['top1_aug'] <= 1 and r['top5'] == 1   # 5 classes
        assert r['top1_aug_check'] == r['top1'], "the plain score of the same model on the same images differs between two evaluations"
        assert r['n_valid'] == QUICK_VALID and r['steps'] == 2*(QUICK_TRAIN//32) and r['epochs_run'] == 2 and r['train_s'] > 0
        assert r['opt'] == ab.ROWS[k]['opt'] and r['lr'] == (0.1 if r['opt'] == 'sgd' else 3e-3)
        assert ('MixCut' in r['cbs']) == (k in 'de') and ('EMA' in r['cbs']) == (k == 'e'), (k, r['cbs'])
        assert r['last_train_loss'] is not None and r['last_train_loss'] > 0
    saved = json.loads((tmp_path/'abl.json').read_text())
    assert set(saved) == {f'{k}-42' for k in 'abcde'} and saved['e-42']['top1'] == res[('e', 42)]['top1']

def test_accuracy_quick():
    "Ours and the stock-fastai baseline (bench/common.py) train on the same subset; sane scores and sizes"
    rows = _bench('accuracy').main(['--quick'])
    assert [r['name'].split(':')[0] for r in rows] == ['tiny_fastai', 'fastai baseline']
    ours,base = rows
    assert all(0 <= r['top1'] <= r['top5'] == 1 and r['wall_s'] > 0 for r in rows)   # 5 classes: top-5 is every class
    assert 100_000 < ours['params'] < 1_000_000 and base['params'] > 8_000_000   # sep_xresnet_tiny against xresnet18
    assert base['train_s'] > 0

def test_accuracy_equal_time_quick():
    "With --equal-time the baseline gets as many epochs as fit in the seconds ours took, at least one"
    o,rows = _bench('accuracy').main(['--quick', '--equal-time'])
    assert 0 <= o['top1'] <= 1 and o['wall_s'] > 0 and len(rows) == 1
    r = rows[0]
    assert r['size'] == 16 and r['epochs'] >= 1 and r['epoch_est_s'] > 0 and 0 <= r['top1'] <= 1 and r['wall_s'] > 0

def test_demo_quick(tmp_path):
    "The demo against stock fastai: four rows, ours through train_recipe (with TTA and results.json), stock through common.stock_fastai"
    rows = _bench('demo').main(['--quick', '--out', str(tmp_path)])
    assert len(rows) == 4 and ['stock' in r['name'] for r in rows] == [False, True, True, False]
    assert all(0 <= r['top1'] <= 1 and r['train_s'] > 0 and r['wall_s'] >= r['train_s'] for r in rows)
    assert all((r.get('top1_tta') is not None) == ('stock' not in r['name']) for r in rows)
    from tiny_fastai.recipe import Results
    for run,arch in (('ours', 'tiny'), ('small', 'small')):
        res = Results.from_json((tmp_path/run/'results.json').read_text())
        assert res.arch == arch and res.epochs == 2 and res.n_train == QUICK_TRAIN and res.n_valid == QUICK_VALID

def test_demo_plans_quick(tmp_path):
    "With --plans, each plan trains its own stage sizes, one epoch per stage"
    dm = _bench('demo')
    rows = dm.main(['--quick', '--plans', '--out', str(tmp_path)])
    assert [r['plan'] for r in rows] == [n for n,_ in dm.PLANS]
    for r,(_,kw) in zip(rows, dm.PLANS):
        assert [h['size'] for h in r['history']] == list(kw['sizes'])
        assert 0 <= r['top1'] <= 1 and 0 <= r['top1_tta'] <= 1 and r['run_s'] > 0

def test_gpu_overhead_quick(tmp_path):
    "The four variants really differ: MixCut and EMA are on or off in the learner that trained, as the variant says"
    rows = _bench('gpu_overhead').main(['--quick', '--work-dir', str(tmp_path/'w'), '--out', str(tmp_path/'o')])
    assert [r['variant'] for r in rows] == ['full, eager', 'no MixCut', 'no EMA', 'neither']
    for r,(mix,ema) in zip(rows, [(1,1), (0,1), (1,0), (0,0)]):
        assert ('MixCut' in r['cbs']) == bool(mix) and ('EMA' in r['cbs']) == bool(ema), r
        assert (r['mix'] == 'mixcut') == bool(mix) and (r['ema'] is not None) == bool(ema) and r['opt'] == 'sgd'
        assert r['size'] == 16 and r['train_ips'] > 0 and r['epoch_s'] > 0 and r['valid_s'] > 0
    assert json.loads((tmp_path/'o'/'gpu_overhead.json').read_text())['rows'] == rows

def test_loaders_quick(tmp_path):
    "Every loader path at every size: images/s, CPU time per image and the seconds to build the loaders measured"
    lb = _bench('loaders')
    res = lb.main(['--quick', '--cache-dir', str(tmp_path/'cache')])
    assert set(res) == {(s, k) for s in (16, 32) for k in lb.PATHS}
    assert all(ips > 0 and cpu_us > 0 and build_s > 0 for ips,cpu_us,build_s in res.values())
    assert any((tmp_path/'cache').iterdir())   # the fast path's arrays went where it was told

def test_models_quick():
    "Parameters and MACs as the models have them, a positive rate for each, xresnet18 the reference"
    rows = _bench('models').main(['--quick'])
    from tiny_fastai.models import get_arch
    by = {r['arch']: r for r in rows}
    assert set(by) == {'tiny', 'small', 'xresnet18'} and all(r['ips'] > 0 and r['best_ips'] >= r['ips'] and r['macs'] > 0 for r in rows)
    assert by['xresnet18']['vs_xresnet18'] == 1 and by['tiny']['params'] == sum(p.numel() for p in get_arch('tiny')(n_out=200).parameters())
    assert by['tiny']['params'] < by['small']['params'] < by['xresnet18']['params']

def test_data_prep_quick(tmp_path):
    "bench/data_prep.py --quick times today's way and the streaming way to the cache, and a second run's start, on the sample"
    spec = importlib.util.spec_from_file_location('data_prep', ROOT/'bench'/'data_prep.py')
    dp = importlib.util.module_from_spec(spec); spec.loader.exec_module(dp)
    res = dp.main(['--quick', '--work', str(tmp_path/'w'), '--json', str(tmp_path/'r.json')])
    st = res['steps']
    assert all(st[k] > 0 for k in ('today_extract', 'today_check_images', 'today_build_cache', 'stream_loaders_ready',
                                   'recipe_first_run_first_batch', 'recipe_second_run_first_batch'))
    assert st['stream_folder_extracted'] >= st['stream_loaders_ready']
    assert (tmp_path/'w'/'stream'/'tiny-imagenet-200'/'wnids.txt').exists()   # the background extraction finished
    assert json.loads((tmp_path/'r.json').read_text())['steps'] == st and '| **train_recipe start' in res['markdown']
