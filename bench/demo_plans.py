"""Which plan the CPU demo should use: `train_recipe('demo')` with the `tiny` model under a few stage plans, one after
another in one process, on the bundled sample (10 classes, 1,000 train / 500 val images). Prints top-1 (plain and TTA),
the seconds of training and of the whole run, and the load average before and after each.

    python bench/demo_plans.py
    python bench/demo_plans.py --quick   # a test on a CPU, in seconds: every plan with 1 epoch per stage, on 5 classes of the sample
"""
import argparse, sys, time, tempfile, warnings
from dataclasses import asdict
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py
from common import load, machine, subset, QUICK_SUBSET
warnings.filterwarnings('ignore')
from tiny_fastai.recipe import train_recipe

PLANS = [('32 px x 16, a cycle', dict(sizes=(32,), epochs=(16,), lrs=(1e-2,), sched='stages')),
         ('32 px x 12 + 48 px x 3, one cycle', dict(sizes=(32,48), epochs=(12,3), lrs=(1e-2,), sched='one')),
         ('24 px x 6 + 32 px x 10, one cycle (the demo)', dict(sizes=(24,32), epochs=(6,10), lrs=(1e-2,), sched='one')),
         ('32 px x 16, one cycle', dict(sizes=(32,), epochs=(16,), lrs=(1e-2,), sched='one'))]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='a test on a CPU: 1 epoch per stage, 5 classes of the sample, no loader workers')
    p.add_argument('--out', default=None, help='where the runs go (default: a temp folder)')
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='demo_plans_'))
    q = dict(data=subset(dest=out/'data', tmp=out, **QUICK_SUBSET), num_workers=0) if a.quick else {}
    print(f"{machine()}; `python bench/demo_plans.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print('| plan | top-1 | TTA | training s | whole run s | load average before -> after |\n|---|---|---|---|---|---|')
    rows = []
    for i,(name,kw) in enumerate(PLANS):
        if a.quick: kw = dict(kw, epochs=(1,)*len(kw['sizes']))
        l0,t = load(),time.time()
        r = train_recipe('demo', out=out/str(i), restart=True, **kw, **q)
        rows.append(dict(asdict(r), plan=name, run_s=time.time()-t, load=f'{l0} -> {load()}'))
        print(f"| {name} | {r.top1:.3f} | {r.top1_tta:.3f} | {r.train_s:.0f} | {time.time()-t:.0f} | {l0} -> {load()} |", flush=True)
    return rows

if __name__ == '__main__': main()
