"""bench/predict.py --quick: a cold `tiny-fastai predict` per row (this checkout), with its wall time and peak memory."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_predict_bench_quick(capsys):
    spec = importlib.util.spec_from_file_location('predict_bench', ROOT/'bench'/'predict.py')
    pb = importlib.util.module_from_spec(spec); spec.loader.exec_module(pb)
    rows = pb.main(['--quick'])
    assert [r['name'] for r in rows] == ['this checkout']
    assert all(r['first_s'] > 0 and r['mb'] > 0 and r['ready_s'] is None for r in rows)
    assert '| this checkout |' in capsys.readouterr().out
