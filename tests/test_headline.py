"""bench/headline.py on the CPU (`--quick`): the headline command runs the CLI end to end with a budget, from a fresh
cache, and reports what the run wrote (top-1, the plan the budget chose, one row per epoch, the fixed cost)."""
import importlib.util, json
from pathlib import Path
from tiny_fastai.data import sample_path

ROOT = Path(__file__).resolve().parents[1]

def test_headline_quick_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location('headline', ROOT/'bench'/'headline.py')
    hb = importlib.util.module_from_spec(spec); spec.loader.exec_module(hb)
    out = tmp_path/'out'
    d = hb.main([str(sample_path()), '--out', str(out), '--quick', '--budget', '100s', '--bare', '--work-dir', str(tmp_path/'w')])
    assert d['status'] == 'done' and json.loads((out/'headline.json').read_text())['status'] == 'done'
    r = d['runs']['headline']
    assert 'error' not in r, r.get('error')
    assert r['budget_s'] == 100 and 0 <= r['top1'] <= 1 and r['epochs'] == sum(s['epochs'] for s in r['stages']) >= 2
    assert len(r['rows']) == r['epochs'] and r['rows'][0]['first_at_size'] and r['rows'][-1]['validated']
    assert r['fixed_s'] > 0 and abs(r['epochs_s'] + r['fixed_s'] - r['wall_s']) < 0.2
    assert r['budget']['epochs'] == [s['epochs'] for s in r['stages']]
    assert (out/'headline_results.json').exists() and 'budget ' in (out/'headline.log').read_text()
    assert [b['size'] for b in d['bare']] == [16, 24] and all(b['ips'] > 0 for b in d['bare'])
    assert '| headline | tiny' in (out/'headline.md').read_text()
