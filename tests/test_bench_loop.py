"""bench/loop.py --quick: the loop-versus-bare-step measurement runs on the CPU and writes its three rows."""
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_loop_bench_quick(tmp_path):
    spec = importlib.util.spec_from_file_location('loop_bench', ROOT/'bench'/'loop.py')
    lb = importlib.util.module_from_spec(spec); spec.loader.exec_module(lb)
    res = lb.main(['--quick', '--out', str(tmp_path)])
    rows = {r['variant']: r for r in json.loads((tmp_path/'loop.json').read_text())['rows']}
    assert set(rows) == {'bare step', 'fit loop', 'fit loop, fastai tensor subclasses'} and res['size'] == 16
    assert all(r['ms_per_batch'] > 0 for r in rows.values()) and rows['bare step']['host_ms_over_bare'] == 0
    assert '| fit loop |' in (tmp_path/'loop.md').read_text()


def test_quickstart_bench_quick(tmp_path):
    "bench/quickstart.py --quick: the README's Python lines and the CLI's recipe each train the sample and report s per epoch"
    spec = importlib.util.spec_from_file_location('quickstart_bench', ROOT/'bench'/'quickstart.py')
    qb = importlib.util.module_from_spec(spec); spec.loader.exec_module(qb)
    res = qb.main(['--quick', '--out', str(tmp_path)])
    rows = {r['way']: r for r in res['rows']}
    assert set(rows) == {'python (README)', 'cli (train_recipe)'} and all(r['epoch_s'] > 0 for r in rows.values())
    assert rows['python (README)']['torch_threads'] == rows['cli (train_recipe)']['torch_threads']   # one CPU policy
