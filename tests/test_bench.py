"""bench/gpu.py on the CPU: the one-command GPU measurement runs every step end to end on the bundled sample in seconds
(`--quick`), and leaves its figures in OUT whatever happens."""
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
