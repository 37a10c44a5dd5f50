"""bench/loop.py --quick: the host-overhead measurement (bare loop, stock fastai, the project's learner) runs on the CPU
and writes its rows; bench/quickstart.py --quick."""
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_loop_bench_quick(tmp_path):
    spec = importlib.util.spec_from_file_location('loop_bench', ROOT/'bench'/'loop.py')
    lb = importlib.util.module_from_spec(spec); spec.loader.exec_module(lb)
    res = lb.main(['--quick', '--out', str(tmp_path), '--fastai-sched'])
    rows = {r['variant']: r for r in json.loads((tmp_path/'loop.json').read_text())['rows']}
    assert set(rows) == {'bare PyTorch loop', 'stock fastai Learner', 'project learner (sprint)',
                         "project learner, fastai's ParamScheduler"} and res['sizes'] == [8, 16]
    for r in rows.values():
        assert all(r[f'ms_{s}px'] > 0 and len(r[f'rounds_{s}px']) == 1 for s in (8, 16))
    assert rows['bare PyTorch loop']['over_bare_8px'] == 0 and res['machine'] and res['load']
    assert '| project learner (sprint) |' in (tmp_path/'loop.md').read_text()


def test_quickstart_bench_quick(tmp_path):
    "bench/quickstart.py --quick: the README's Python lines and the CLI's recipe each train the sample and report s per epoch"
    spec = importlib.util.spec_from_file_location('quickstart_bench', ROOT/'bench'/'quickstart.py')
    qb = importlib.util.module_from_spec(spec); spec.loader.exec_module(qb)
    res = qb.main(['--quick', '--out', str(tmp_path)])
    rows = {r['way']: r for r in res['rows']}
    assert set(rows) == {'python (README)', 'cli (train_recipe)'} and all(r['epoch_s'] > 0 for r in rows.values())
    assert rows['python (README)']['torch_threads'] == rows['cli (train_recipe)']['torch_threads']   # one CPU policy
