"""Is `--budget` a deadline? `tiny-fastai train --budget B` timed from the outside, as a user types it, on the bundled sample.

Each row is one command run in a subprocess (the console script's entry point, a fresh output folder): its wall time
from the shell's side, how it ended, the plan the budget chose, top-1 (plain and with the demo's TTA), and the seconds
of each phase that results.json records (start-up and imports, data, learner, timing, each stage, lr_find, evaluation,
export, pictures; what is left of the wall time is the process's start and exit). The rows run one after another in
the order given, after a row without a budget (the demo as it is) for the accuracy to compare with; `--repeat`
rounds of all rows.

Usage (2-core CPU, about 5 minutes): python bench/budget.py --out OUT
The issue's commands: --budget 60s (twice), --budget 60s --lr find (twice), --budget 20s.
`--quick` runs one 30 s budget on a 3-class slice of the sample, for testing."""
import argparse, json, shlex, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Report, command, load

ROWS = ['', '--budget 60s', '--budget 60s', '--budget 60s --lr find', '--budget 60s --lr find', '--budget 20s']

def run(opts:str, out:Path, data=None) -> dict:
    "`tiny-fastai train OPTS` in a subprocess: wall time from outside, exit code, and what results.json says"
    cmd = [sys.executable, '-c', 'from tiny_fastai.cli import run; run()', 'train', '--out', str(out), *shlex.split(opts),
           *(['--data', str(data)] if data is not None else [])]
    l0,t = load(),time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t
    row = dict(command='tiny-fastai train ' + opts, wall_s=round(wall, 1), exit=p.returncode, load=f'{l0} -> {load()}')
    if p.returncode != 0: return dict(row, error=(p.stderr.strip().splitlines() or ['?'])[-1][-300:])
    res = json.loads((out/'results.json').read_text())
    ph = res.get('phases') or {}
    return dict(row, epochs=' + '.join(f"{n} x {s} px" for s,n,_ in res['recipe']['stages']), top1=round(res['top1'], 3),
                top1_tta=round(res['top1_tta'], 3) if res.get('top1_tta') is not None else None,
                stopped=bool((res.get('budget') or {}).get('stopped_at_deadline')), replanned=bool((res.get('budget') or {}).get('replanned')),
                results_s=res.get('wall_s'), start_s=ph.get('start'), timing_s=ph.get('timing'), lr_find_s=ph.get('lr_find'),
                train_s=round(sum(v for k,v in ph.items() if k.startswith('stage')), 1), evaluate_s=ph.get('evaluate'),
                after_s=round((ph.get('export') or 0) + (ph.get('pictures') or 0), 1), exit_s=round(wall - (res.get('wall_s') or wall), 1))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/bench_budget', help='where budget.md and budget.json go')
    p.add_argument('--rows', nargs='*', default=None, help='the options of each row (default: the issue\'s commands)')
    p.add_argument('--repeat', type=int, default=1)
    p.add_argument('--quick', action='store_true', help='a test: one 30 s budget on a 3-class slice of the sample')
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix='bench-budget-'))
    data = None
    if a.quick:
        from tiny_fastai.data import make_subset, sample_path
        data = make_subset(sample_path(), work/'tiny', n_classes=3, n_train=40, n_val=10)
    rows = a.rows if a.rows is not None else (['--budget 30s --sizes 16,24 --epochs 1,2 --bs 16'] if a.quick else ROWS)
    rep = Report(a.out, 'budget', title='--budget on this machine, timed from the shell', command=command(__file__, argv))
    for i in range(a.repeat):
        for j,opts in enumerate(rows): rep.add('runs', run(opts, work/f'run{i}-{j}', data))
    rep.done()
    return rep

if __name__ == '__main__': main()
