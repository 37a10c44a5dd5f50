"""bench/headline.py on the CPU (`--quick`): the headline command runs the CLI end to end with a budget, isolated (its own
caches), and reports what the run wrote (top-1, the plan the budget chose, the phases, one row per epoch, the fixed
cost); a child that hangs is stopped at the deadline with what it wrote kept."""
import importlib.util, json, os, sys, time
from pathlib import Path
from tiny_fastai.data import sample_path

ROOT = Path(__file__).resolve().parents[1]

def _headline():
    spec = importlib.util.spec_from_file_location('headline', ROOT/'bench'/'headline.py')
    hb = importlib.util.module_from_spec(spec); spec.loader.exec_module(hb)
    return hb

def test_headline_quick_on_cpu(tmp_path):
    hb = _headline()
    out = tmp_path/'out'
    d = hb.main([str(sample_path()), '--out', str(out), '--quick', '--budget', '100s', '--bare', '--work-dir', str(tmp_path/'w')])
    assert d['status'] == 'done' and json.loads((out/'headline.json').read_text())['status'] == 'done'
    r = d['runs']['headline']
    assert 'error' not in r, r.get('error')
    assert r['budget_s'] == 100 and 0 <= r['top1'] <= 1 and r['epochs'] == sum(s['epochs'] for s in r['stages']) >= 1
    assert len(r['rows']) == r['epochs'] and r['rows'][0]['first_at_size'] and r['rows'][-1]['validated']
    assert r['fixed_s'] > 0 and abs(r['epochs_s'] + r['fixed_s'] - r['wall_s']) < 0.2
    b = r['budget']   # the plan chosen, or (epochs slower than timed: a busy machine) the plan it was shortened to
    assert (b['replanned'][-1]['epochs'] if 'replanned' in b else b['epochs']) == [s['epochs'] for s in r['stages']]
    assert {'start', 'data', 'learner', 'timing', 'evaluate', 'export', 'pictures'} <= set(r['phases']) and r['exit_s'] >= 0
    assert all(0 < x['train_s'] <= x['time_s'] for x in r['rows'])
    assert (out/'headline_results.json').exists() and 'budget ' in (out/'headline.log').read_text()
    # isolated: the run's archive cache and fastai's data folder are the run's own
    assert (tmp_path/'w'/'cache-headline').exists() and not (Path.home()/'.cache'/'tiny_fastai'/'headline').exists()
    assert [b['size'] for b in d['bare']] == [16, 24] and all(b['ips'] > 0 for b in d['bare'])
    assert '| headline | tiny' in (out/'headline.md').read_text() and '| evaluate |' in (out/'headline.md').read_text()

HANG = '''import sys, time, pathlib
run = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); run.mkdir(parents=True)
(run/'history.csv').write_text('epoch,train_loss\\n0,5.3\\n')
print('budget 5 s: 1 x 16 px', flush=True)
time.sleep(600)   # a hang: the headline must stop it
'''

def test_a_hanging_child_is_stopped_at_the_deadline_with_its_files_kept(tmp_path, monkeypatch):
    hb = _headline()
    fake = tmp_path/'hang.py'; fake.write_text(HANG)
    monkeypatch.setattr(hb, 'train_command', lambda preset, budget, data, run_dir, arch=None, extra=(): [sys.executable, str(fake), '--out', str(run_dir)])
    out, t = tmp_path/'out', time.time()
    d = hb.main([str(sample_path()), '--out', str(out), '--quick', '--budget', '5s', '--grace', '2', '--work-dir', str(tmp_path/'w')])
    assert time.time() - t < 300   # the child sleeps 600 s: only stopping it ends the script this early
    r = d['runs']['headline']
    assert d['status'] == 'stopped at the deadline' and r['ended'] == 'stopped at the deadline' and r['returncode'] != 0
    assert json.loads((out/'headline.json').read_text())['status'] == 'stopped at the deadline'
    assert (out/'headline_history.csv').read_text().startswith('epoch,train_loss') and 'budget 5 s' in (out/'headline.log').read_text()
    # the whole script's --deadline stops it too, whatever the run's budget
    d = hb.main([str(sample_path()), '--out', str(tmp_path/'o2'), '--quick', '--budget', '1h', '--deadline', '6', '--work-dir', str(tmp_path/'w2')])
    assert d['runs']['headline']['ended'] == 'stopped at the deadline' and d['script_s'] < 300

def test_budget_bench_quick(tmp_path):
    "bench/budget.py --quick: the CLI with a budget, timed from outside, its phases read back from results.json"
    spec = importlib.util.spec_from_file_location('budget', ROOT/'bench'/'budget.py')
    bb = importlib.util.module_from_spec(spec); spec.loader.exec_module(bb)
    rep = bb.main(['--quick', '--out', str(tmp_path/'o')])
    (r,) = rep.sections['runs']
    assert r['exit'] == 0 and r['epochs'] and 0 <= r['top1'] <= 1 and r['wall_s'] > 0 and r['exit_s'] >= 0, r
    assert r['timing_s'] > 0 and r['train_s'] > 0 and json.loads((tmp_path/'o'/'budget.json').read_text())['status'] == 'done'
