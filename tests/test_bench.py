"""bench/gpu.py on the CPU: the one-command GPU measurement runs every step end to end on the bundled sample in seconds
(`--quick`), and leaves its figures in OUT whatever happens; every other script of bench/ (but depthwise.py, in test_bench_models.py)
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
    out = tmp_path/'out'
    _gpu_bench().main([str(sample_path()), '--out', str(out), '--quick', '--workers', '0', '--work-dir', str(tmp_path/'w')])
    d = json.loads((out/'gpu_bench.json').read_text())
    assert d['status'] == 'done' and set(d['steps']) == {'data', 'speed', 'full', 'sprint', 'projection', 'compile'}
    st = d['steps']
    assert st['data']['n_train'] == 1000 and st['data']['n_valid'] == 500
    assert all(r['ips'] > 0 for r in st['speed']['rows']) and all(r['ips'] > 0 for r in st['speed']['loader'])
    fu = st['full']
    assert 'error' not in fu and len(fu['clock']) == 4 and all(r['train_ips'] > 0 for r in fu['clock']) and 0 <= fu['top1'] <= 1
    sp = st['sprint']
    assert sp['scaled'] == (sp['epochs_run'] != sp['preset_epochs']) and all(n >= 1 for n in sp['epochs_run'])
    assert len(sp['history']) == sum(sp['epochs_run']) and 0 <= sp['top1'] <= sp['top5'] <= 1 and sp['tta'] == 'flip'
    assert json.loads((out/'sprint_results.json').read_text())['top1'] == sp['top1']
    md = (out/'gpu_bench.md').read_text()
    assert '## 3. the sprint preset' in md and 'skipped: no GPU' in md

def test_scale_epochs_fits_the_budget():
    gb = _gpu_bench()
    assert gb.scale_epochs([10, 14, 16], [5, 5, 8], 1000) == [10, 14, 16]
    e = gb.scale_epochs([10, 14, 16], [5, 5, 8], 200)
    assert sum(n*c for n,c in zip(e, [5, 5, 8])) <= 200 and all(n >= 1 for n in e) and e[2] > e[0]


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
    "Each plan trains its own stage sizes and schedule, one epoch per stage"
    dp = _bench('demo_plans')
    rows = dp.main(['--quick', '--out', str(tmp_path)])
    assert [r['plan'] for r in rows] == [n for n,_ in dp.PLANS]
    for r,(_,kw) in zip(rows, dp.PLANS):
        assert [s['size'] for s in r['stages']] == list(kw['sizes']) and [s['epochs'] for s in r['stages']] == [1]*len(kw['sizes'])
        assert r['sched'] == kw['sched'] and r['n_train'] == QUICK_TRAIN and len(r['history']) == len(kw['sizes'])
        assert 0 <= r['top1'] <= 1 and 0 <= r['top1_tta'] <= 1 and r['train_s'] > 0

def test_gpu_overhead_quick(tmp_path):
    "The four variants really differ: MixCut and EMA are on or off in the learner that trained, as the variant says"
    rows = _bench('gpu_overhead').main(['--quick', '--work-dir', str(tmp_path/'w'), '--out', str(tmp_path/'o')])
    assert [r['variant'] for r in rows] == ['full, eager', 'no MixCut', 'no EMA', 'neither']
    for r,(mix,ema) in zip(rows, [(1,1), (0,1), (1,0), (0,0)]):
        assert ('MixCut' in r['cbs']) == bool(mix) and ('EMA' in r['cbs']) == bool(ema), r
        assert (r['mix'] == 'mixcut') == bool(mix) and (r['ema'] is not None) == bool(ema) and r['opt'] == 'sgd'
        assert r['size'] == 16 and r['train_ips'] > 0 and r['epoch_s'] > 0 and r['valid_s'] > 0
    assert json.loads((tmp_path/'o'/'gpu_overhead.json').read_text())['rows'] == rows

def test_loaders_quick():
    "Three batches of 32 at each size, resized to that size"
    rows = _bench('loaders').main(['--quick'])
    assert [r['size'] for r in rows] == [16, 32] and [r['px'] for r in rows] == [16, 32]
    assert all(r['images'] == 3*32 and r['ips'] > 0 and r['n_train'] == 1000 and r['n_valid'] == 500 for r in rows)

def test_loaders_fast_quick(tmp_path):
    "Every loader path at every size: images/s and CPU time per image measured"
    lf = _bench('loaders_fast')
    res = lf.main(['--quick', '--cache-dir', str(tmp_path/'cache')])
    assert set(res) == {(s, k) for s in (16, 32) for k in lf.PATHS}
    assert all(ips > 0 and cpu_us > 0 for ips,cpu_us in res.values())
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
