"""The demo against stock fastai, side by side, on the bundled 10-class sample (1,000 train / 500 val images), on the CPU.

- ours: `train_recipe('demo')`, what `tiny-fastai train` runs with no option (loaders, training, evaluation, export);
- ours with the 1.6M-parameter `small` preset and twice the epochs (`--arch small --epochs 8,16`), against stock
  fastai's best;
- stock fastai, as a fastai user would start: a `DataBlock` with `aug_transforms(size=SIZE)`, `xresnet18`,
  `fit_one_cycle(EPOCHS, 3e-3)`; at 32 px (8 epochs) and at 64 px (16 epochs).
Prints one markdown table: top-1 on the 500 val images, the seconds of training (the epochs' times) and of the whole
run, and the load average before and after each. Rows run one after another in one process, alternating if `--repeat`.

With `--plans`, which stage plan the demo should use instead: `train_recipe('demo')` under each plan of `PLANS`, one
after another, with top-1 (plain and TTA) and the seconds of each.

    python bench/demo.py [--repeat 1] [--threads N] [--plans]
    python bench/demo.py --quick [--plans]   # a test on a CPU, in seconds: 1 epoch per stage on 5 classes of the sample (100/50 images)
"""
import argparse, os, sys, time, tempfile, warnings
from dataclasses import asdict
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import command, load, machine, subset, stock_fastai, QUICK_SUBSET   # the shared harness (and the checkout on the path)
import torch
warnings.filterwarnings('ignore')
from tiny_fastai.data import sample_path
from tiny_fastai.recipe import train_recipe


def stock(path, size, epochs, bs=64, lr=3e-3, seed=42, workers=None):
    "Stock fastai on the same images and labels: aug_transforms at `size`, xresnet18, fit_one_cycle (`common.stock_fastai`)"
    r = stock_fastai(path, [size], [epochs], lr=lr, bs=bs, seed=seed, num_workers=workers, log=False)
    return dict(top1=r['top1'], train_s=r['train_s'])

def ours(out, seed=42, **kw):
    r = train_recipe('demo', out=out, seed=seed, restart=True, **kw)
    return dict(top1=r.top1, top1_tta=r.top1_tta, train_s=r.train_s)

PLANS = [('32 px x 16, a cycle', dict(sizes=(32,), epochs=(16,), lrs=(1e-2,), sched='stages')),
         ('32 px x 12 + 48 px x 3, one cycle', dict(sizes=(32,48), epochs=(12,3), lrs=(1e-2,), sched='one')),
         ('24 px x 6 + 32 px x 10, one cycle (the demo)', dict(sizes=(24,32), epochs=(6,10), lrs=(1e-2,), sched='one')),
         ('32 px x 16, one cycle', dict(sizes=(32,), epochs=(16,), lrs=(1e-2,), sched='one'))]

def plans(out, quick, q):
    "The demo under each plan of `PLANS` (1 epoch per stage if `quick`), one after another: one row each"
    print('| plan | top-1 | TTA | training s | whole run s | load average before -> after |\n|---|---|---|---|---|---|')
    rows = []
    for i,(name,kw) in enumerate(PLANS):
        if quick: kw = dict(kw, epochs=(1,)*len(kw['sizes']))
        l0,t = load(),time.time()
        r = train_recipe('demo', out=out/f'plan{i}', restart=True, **kw, **q)
        rows.append(dict(asdict(r), plan=name, run_s=time.time()-t, load=f'{l0} -> {load()}'))
        print(f"| {name} | {r.top1:.3f} | {r.top1_tta:.3f} | {r.train_s:.0f} | {time.time()-t:.0f} | {l0} -> {load()} |", flush=True)
    return rows

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeat', type=int, default=1, help='rounds of all rows')
    p.add_argument('--threads', type=int, default=None, help='PyTorch threads for the stock rows (ours sets its own)')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: 1 epoch per stage, 5 classes of the sample, 16 px stock rows')
    p.add_argument('--out', default=None, help='where the runs go (default: a temp folder)')
    p.add_argument('--plans', action='store_true', help="which stage plan for the demo: each of PLANS instead of the rows against stock fastai")
    p.add_argument('--stock32-epochs', type=int, default=8, help="epochs of the stock 32 px row (e.g. as many as fit in the demo's training time)")
    p.add_argument('--rows', type=int, default=4, help='run only the first ROWS rows (2: the demo and the stock 32 px row)')
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='demo_bench_'))
    path = subset(dest=out/'data', tmp=out, **QUICK_SUBSET) if a.quick else sample_path()
    q = dict(data=path, epochs=(1,1), num_workers=0) if a.quick else {}
    if a.plans:
        print(f"{machine()}; `{command(__file__, argv)}`\n")
        return plans(out, a.quick, {k: v for k,v in q.items() if k != 'epochs'})
    e32,e64,s64 = (1,1,16) if a.quick else (a.stock32_epochs,16,64)
    rows = []
    for k in range(a.repeat):
        for name,fn in (('tiny_fastai demo (`tiny-fastai train`)', lambda: ours(out/'ours', **q)),
                        (f'stock fastai: xresnet18, aug_transforms(size=32), fit_one_cycle({e32}, 3e-3)',
                         lambda: stock(path, 32, e32, workers=0 if a.quick else None)),
                        (f'stock fastai: xresnet18, aug_transforms(size={s64}), fit_one_cycle({e64}, 3e-3)',
                         lambda: stock(path, s64, e64, workers=0 if a.quick else None)),
                        ('tiny_fastai, a larger model (`tiny-fastai train --arch small --epochs 8,16`)',
                         lambda: ours(out/'small', arch='small', **{'epochs': (8,16), **q})))[:a.rows]:
            if a.threads and 'stock' in name: torch.set_num_threads(a.threads)
            l0,t = load(),time.time()
            r = fn()
            rows.append(dict(name=name, wall_s=time.time()-t, load=f'{l0} -> {load()}', **r))
            print(f"{name}: {rows[-1]}", flush=True)
    print(f"\n{machine()}; `python bench/demo.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print('| run | top-1 (%d val images) | TTA | training s | whole run s | load average (1 min) before -> after |' % (50 if a.quick else 500))
    print('|---|---|---|---|---|---|')
    for r in rows:
        tta = f"{r['top1_tta']:.3f}" if r.get('top1_tta') is not None else '-'
        print(f"| {r['name']} | {r['top1']:.3f} | {tta} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['load']} |")
    return rows

if __name__ == '__main__': main()
