"""Where the `full` recipe's per-batch time goes at 32 px on a GPU: one epoch of the `full` preset (eager) with and without
MixCut and EMA, measured with bench/gpu.py's per-epoch clock (train images/s after the first 10 batches).

Each variant trains what `train_recipe('full')` trains: the preset resolved by `resolve_plan` (one stage of one epoch at
`--size`), `tiny_dls` on the array cache, `tiny_learner` with the preset's optimizer, weight decay, label smoothing, mix
and EMA, and `progressive_fit` with its schedule; without the evaluation and export that follow the epochs (not timed).
MixCut is turned off through the recipe (`mix='none'`); EMA through `tiny_learner(ema=None)`, because `train_recipe` and
`resolve_plan` cannot turn off a preset's EMA (an override of None keeps the preset's, and a recipe's `ema` must be a
decay in (0, 1)). Each row lists the callbacks its learner really trained with.

Usage: python bench/gpu_overhead.py DATA --work-dir W --out OUT   (W: bench/gpu.py's work dir, whose cache it reuses)
       python bench/gpu_overhead.py --quick --work-dir W --out OUT   (a test on a CPU, in seconds: the `tiny` model at
       16 px on 5 classes of the bundled sample)"""
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu as gb   # bench/gpu.py: Clock, and the checkout's tiny_fastai
from common import load, machine, subset, QUICK_SUBSET
from tiny_fastai.core import seed_everything, get_device
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.plan import resolve_plan
from tiny_fastai.loaders import tiny_dls
from tiny_fastai.learner import tiny_learner
from tiny_fastai.fit import progressive_fit

VARIANTS = [('full, eager', True, True), ('no MixCut', False, True), ('no EMA', True, False), ('neither', False, False)]

def run_variant(path, work, mix:bool, ema:bool, size, workers, skip, quick=False, seed=42):
    "One epoch of the `full` preset at `size` px (MixCut if `mix`, EMA if `ema`); the clock's row and the learner's callbacks"
    kw = dict(arch='tiny', bs=16) if quick else {}
    r = resolve_plan('full', epochs=[1], sizes=[size], lrs=[0.2], compile=False, mix=None if mix else 'none', **kw)
    dev = get_device('cpu' if quick else None)
    seed_everything(seed, dev)
    dls = tiny_dls(path, size=size, bs=r.bs, cache=r.cache, cache_dir=work/'cache', num_workers=workers, device=dev, aug=r.aug, seed=seed)
    clock = gb.Clock(skip)
    learn = tiny_learner(dls, r.arch, mix=r.mix, ls=r.ls, wd=r.wd, opt=r.opt, ema=r.ema if ema else None,
                         path=work/'overhead', cbs=[clock], ckpt_every=float('inf'))
    cbs = sorted(type(c).__name__ for c in learn.cbs)
    with learn.no_bar(): progressive_fit(learn, r.stages, resume=False, pct_start=r.pct_start, sched=r.sched)
    return clock.rows[-1], dict(arch=r.arch, bs=r.bs, opt=r.opt, mix=r.mix, ema=r.ema if ema else None, cbs=cbs)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?'); p.add_argument('--work-dir', required=True); p.add_argument('--out', required=True)
    p.add_argument('--size', type=int, default=32); p.add_argument('--skip', type=int, default=10); p.add_argument('--workers', type=int, default=15)
    p.add_argument('--quick', action='store_true', help='a test on a CPU: tiny model, 16 px, bs 16, 5 classes of the bundled sample, no workers')
    a = p.parse_args(argv)
    work,out = Path(a.work_dir),Path(a.out); out.mkdir(parents=True, exist_ok=True); work.mkdir(parents=True, exist_ok=True)
    if a.quick: path,a.size,a.skip,a.workers = subset(dest=work/'data', tmp=work, **QUICK_SUBSET),16,2,0
    elif not a.data: p.error('give the Tiny ImageNet archive or folder as DATA')
    else:
        src = Path(a.data)
        path = get_tiny_imagenet(src) if src.is_dir() else get_tiny_imagenet(src, dest=work/'data')
    rows = []
    for name,mix,ema in VARIANTS:
        t = time.time()
        clock,cfg = run_variant(path, work, mix, ema, a.size, a.workers, a.skip, quick=a.quick)
        rows.append(dict(variant=name, size=a.size, **{k: clock[k] for k in ('epoch_s', 'train_ips', 'valid_s')},
                         wall_s=round(time.time()-t, 1), load=load(), **cfg))
        print(rows[-1], flush=True)
        (out/'gpu_overhead.json').write_text(json.dumps(dict(machine=machine(), command=' '.join(sys.argv[1:] if argv is None else argv),
                                                             rows=rows), indent=1) + '\n')
    return rows

if __name__ == '__main__':
    main(); sys.stdout.flush(); os._exit(0)   # workers/compile threads must not hold the exit
