"""Equal-budget accuracy on real data (issue #5, benchmark 3).

A 20-class subset of the full Tiny ImageNet (500 train and 50 val images per class, made with `make_subset`), the same
stages (sizes and epochs) for both contenders, in one run on one machine:
- ours: `tiny_dls` (imgaug augmentation, `BatchResize`), a separable xresnet preset from `tiny_fastai.models`,
  `tiny_learner` (label smoothing) and `progressive_fit` (one `fit_one_cycle` per stage, loaders swapped by `resize_dls`);
- baseline: stock fastai, `xresnet18` with its own head, `aug_transforms(size=...)` rebuilt per stage, `fit_one_cycle`, no imgaug.
Prints a markdown table: top-1 (and top-5) on the subset's val images and wall time of each.

With `--equal-time` the budget is wall time instead of epochs (issue #10): ours runs first with `--sizes`/`--epochs`,
then the baseline gets the seconds ours took, once at each size of `--baseline-sizes` (one stage, `fit_one_cycle`),
with as many epochs as fit: the time of one epoch is estimated first on a throwaway model (`--probe-batches` training
batches, the first quarter of them left out as warm-up, the rate scaled to the whole epoch, plus one validation
pass; not counted in the baseline's wall time), and the baseline trains round((seconds of ours - seconds to build its loaders) / seconds per epoch) epochs, at least 1. The
table marks the better baseline.

    python bench/accuracy.py [--data PATH_OR_ARCHIVE] [--epochs 4,4,4] [--sizes 16,32,64] [--arch tiny] [--bs 64]
    python bench/accuracy.py --equal-time [--baseline-sizes 32,64] [--threads 1] ...
    python bench/accuracy.py --quick [--equal-time]   # a test on a CPU, in seconds: 5 classes of the bundled sample, 16/24 px, 1 epoch each

PATH defaults to $TINY_IMAGENET.
"""
import argparse, os, platform, subprocess, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model as cpu_name, load, subset, stock_dls, stock_learner, stock_fastai, QUICK_SUBSET   # bench/common.py (and the checkout on the path)


def baseline(path, sizes, epochs, lr, bs, seed, num_workers, budget_s=None, probe_batches=40):
    "Stock fastai (`common.stock_fastai`): xresnet18, aug_transforms, fit_one_cycle per stage, loaders rebuilt at each size; or `budget_s` seconds at `sizes[0]`"
    if budget_s is None: return stock_fastai(path, sizes, epochs, lr=lr, bs=bs, seed=seed, num_workers=num_workers, min_scale=0.75)
    from fastai.vision.all import set_seed
    set_seed(seed, reproducible=True)
    return _baseline_timed(lambda size: stock_dls(path, size, bs, num_workers, min_scale=0.75), sizes[0], lr, seed, budget_s, probe_batches)


def _baseline_timed(dls_at, size, lr, seed, budget_s, probe_batches):
    "The baseline at one `size` with as many epochs as fit in `budget_s` seconds (loaders built inside the budget)"
    from fastai.vision.all import set_seed, Callback, CancelTrainException
    warm = max(1, probe_batches // 4)
    class Probe(Callback):
        "Train `probe_batches` batches, then validate once; the rate leaves out the first `warm` batches (warm-up)"
        def before_train(self): self.t = time.time()
        def after_batch(self):
            if not self.training: return
            if self.iter + 1 == warm: self.t = time.time()
            if self.iter + 1 >= probe_batches: raise CancelTrainException()
        def after_train(self): self.train_s, self.n = time.time() - self.t, min(probe_batches, self.n_iter) - warm
        def before_validate(self): self.t = time.time()
        def after_validate(self): self.valid_s = time.time() - self.t
    t0 = time.time()
    dls = dls_at(size)
    build_s = time.time() - t0
    make = lambda: stock_learner(dls)
    t1, probe = time.time(), Probe()
    with make().no_bar() as pl: pl.fit_one_cycle(1, lr, cbs=probe)
    probe_s = time.time() - t1
    epoch_s = probe.train_s * len(dls.train) / probe.n + probe.valid_s
    n = max(1, round((budget_s - build_s) / epoch_s))
    print(f"baseline at {size} px: loaders {build_s:.0f} s, one epoch ~{epoch_s:.0f} s (rate over {probe.n} probe batches after {warm} warm-up, + validation {probe.valid_s:.0f} s; "
          f"{probe_s:.0f} s, not counted), {budget_s:.0f} s -> {n} epoch(s)", flush=True)
    set_seed(seed, reproducible=True)
    learn = make()
    with learn.no_bar(): learn.fit_one_cycle(n, lr)
    _, top1, top5 = learn.validate()
    return dict(top1=float(top1), top5=float(top5), params=sum(p.numel() for p in learn.model.parameters()), epochs=n,
                size=size, build_s=build_s, epoch_est_s=epoch_s, probe_s=probe_s, t0=t0)


def ours(path, sizes, epochs, lr, bs, seed, num_workers, arch, out, fast=True):
    "tiny_fastai's recipe at the same sizes and epochs"
    from fastai.vision.all import set_seed
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.fit import progressive_fit
    from tiny_fastai.evaluate import evaluate
    set_seed(seed, reproducible=True)
    dls = tiny_dls(path, size=sizes[0], bs=bs, seed=seed, num_workers=num_workers, cache=fast)
    learn = tiny_learner(dls, arch, path=out)
    progressive_fit(learn, [(s, n, lr) for s, n in zip(sizes, epochs)], resume=False)
    ev = evaluate(learn, size=sizes[-1], tta=False)
    return dict(top1=ev['top1'], top5=ev['top5'], params=learn.rules['params'])


def _setup(a):
    sizes, epochs = [int(s) for s in a.sizes.split(',')], [int(e) for e in a.epochs.split(',')]
    tmp = Path(tempfile.mkdtemp(prefix='tiny-acc-'))
    sub = subset(a.data, a.subset, classes=a.classes, n_train=a.n_train, n_val=a.n_val, tmp=tmp)   # bench/common.py
    return sizes, epochs, tmp, sub


def equal_time(a, argv):
    "Ours with its stages, then the baseline at each of `--baseline-sizes` with the seconds ours took"
    import torch, fastai
    sizes, epochs, tmp, sub = _setup(a)
    load0 = load(', ')
    t0 = time.time()
    o = ours(sub, sizes, epochs, a.lr, a.bs, a.seed, a.num_workers, a.arch, tmp/'ours', fast=not a.datablock)
    o['wall_s'] = time.time() - t0
    print(f"ours: top-1 {o['top1']:.3f}, {o['wall_s']:.0f} s; load average {load(', ')}", flush=True)
    rows = []
    for size in [int(s) for s in a.baseline_sizes.split(',')]:
        r = baseline(sub, [size], None, a.lr, a.bs, a.seed, a.num_workers, budget_s=o['wall_s'], probe_batches=a.probe_batches)
        r['wall_s'] = time.time() - r.pop('t0') - r['probe_s']
        print(f"baseline {size} px x{r['epochs']}: top-1 {r['top1']:.3f}, {r['wall_s']:.0f} s; load average {load(', ')}", flush=True)
        rows.append(r)
    best = max(rows, key=lambda r: r['top1'])
    print(f"\n`python bench/accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores "
          f"({cpu_name()}), torch {torch.__version__}, fastai {fastai.__version__}, {torch.get_num_threads()} torch thread(s), "
          f"{a.num_workers} loader worker(s), {a.classes} classes x {a.n_train} train / {a.n_val} val, bs {a.bs}, lr {a.lr}, seed {a.seed}; "
          f"load average {load0} at the start, {load(', ')} at the end\n")
    print('| recipe | params | sizes x epochs | top-1 | top-5 | wall time | one epoch (est.) |\n|---|---|---|---|---|---|---|')
    plan = ', '.join(f'{s} px x{n}' for s, n in zip(sizes, epochs))
    print(f"| tiny_fastai: sep_xresnet_{a.arch}, imgaug, label smoothing, progressive_fit | {o['params']/1e6:.2f}M | {plan} | "
          f"{o['top1']:.3f} | {o['top5']:.3f} | {o['wall_s']:.0f} s | - |")
    for r in rows:
        mark = ' (better baseline)' if r is best and len(rows) > 1 else ''
        print(f"| fastai baseline: xresnet18, aug_transforms, fit_one_cycle{mark} | {r['params']/1e6:.2f}M | {r['size']} px x{r['epochs']} | "
              f"{r['top1']:.3f} | {r['top5']:.3f} | {r['wall_s']:.0f} s | {r['epoch_est_s']:.0f} s |")
    print(f"\nours - better baseline: {o['top1'] - best['top1']:+.3f} top-1")
    return o, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=os.environ.get('TINY_IMAGENET'), help='full Tiny ImageNet: archive or folder')
    p.add_argument('--subset', default=None, help='where to keep the 20-class subset (default: a temp folder)')
    p.add_argument('--sizes', default='16,32,64'); p.add_argument('--epochs', default='4,4,4')
    p.add_argument('--arch', default='tiny'); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--lr', type=float, default=3e-3); p.add_argument('--seed', type=int, default=42)
    p.add_argument('--num-workers', type=int, default=None); p.add_argument('--datablock', action='store_true', help='ours on the DataBlock path instead of the fast path'); p.add_argument('--classes', type=int, default=20)
    p.add_argument('--only', choices=['ours', 'baseline'], help='run one contender only')
    p.add_argument('--equal-time', action='store_true', help='give the baseline the wall time ours took, not the same epochs')
    p.add_argument('--baseline-sizes', default='32,64', help='with --equal-time: the baseline sizes, each run separately')
    p.add_argument('--probe-batches', type=int, default=40, help='with --equal-time: batches timed to estimate an epoch')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own)')
    p.add_argument('--n-train', type=int, default=500, help='train images per class of the subset')
    p.add_argument('--n-val', type=int, default=50, help='val images per class of the subset')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: 5 classes of the bundled sample (20 train / 10 val each), '
                   'sizes 16,24, 1 epoch each, bs 32, no loader workers; with --equal-time the baseline at 16 px, 4 probe batches')
    a = p.parse_args(argv)
    if a.quick:
        a.data,a.subset,a.sizes,a.epochs,a.bs,a.num_workers = None,None,'16,24','1,1',32,0
        a.classes,a.n_train,a.n_val = QUICK_SUBSET['classes'],QUICK_SUBSET['n_train'],QUICK_SUBSET['n_val']
        a.baseline_sizes,a.probe_batches = '16',4
    elif not a.data: p.error('give --data or set TINY_IMAGENET to the full Tiny ImageNet')
    if a.equal_time and a.only: p.error('--equal-time runs both contenders (ours gives the time budget)')
    warnings.filterwarnings('ignore')
    if a.threads: __import__('torch').set_num_threads(a.threads)
    if a.equal_time: return equal_time(a, argv)
    sizes, epochs, tmp, sub = _setup(a)
    rows = []
    for name, fn in [('tiny_fastai: sep_xresnet_' + a.arch + ', imgaug, label smoothing, progressive_fit', 
                      lambda: ours(sub, sizes, epochs, a.lr, a.bs, a.seed, a.num_workers, a.arch, tmp/'ours', fast=not a.datablock)),
                     ('fastai baseline: xresnet18, aug_transforms, fit_one_cycle',
                      lambda: baseline(sub, sizes, epochs, a.lr, a.bs, a.seed, a.num_workers))]:
        if a.only and not name.startswith('tiny_fastai' if a.only == 'ours' else 'fastai'): continue
        t0 = time.time(); r = fn(); r['wall_s'] = time.time() - t0; r['name'] = name; rows.append(r)
        print(f"{name}: top-1 {r['top1']:.3f}, {r['wall_s']:.0f} s", flush=True)
    print(f"\n`python bench/accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores "
          f"({cpu_name()}), torch {__import__('torch').__version__}, {a.classes} classes x {a.n_train} train / {a.n_val} val, "
          f"sizes {a.sizes} px, epochs {a.epochs}, bs {a.bs}, lr {a.lr}\n")
    print('| recipe | params | top-1 | top-5 | wall time |\n|---|---|---|---|---|')
    for r in rows: print(f"| {r['name']} | {r['params']/1e6:.2f}M | {r['top1']:.3f} | {r['top5']:.3f} | {r['wall_s']:.0f} s |")
    return rows


if __name__ == '__main__': main()
