"""Equal-budget accuracy on real data (issue #5, benchmark 3).

A 20-class subset of the full Tiny ImageNet (500 train and 50 val images per class, made with `make_subset`), the same
stages (sizes and epochs) for both contenders, in one run on one machine:
- ours: `tiny_dls` (imgaug augmentation, `BatchResize`), a separable xresnet preset from `tiny_fastai.models`,
  `tiny_learner` (label smoothing) and `progressive_fit` (one `fit_one_cycle` per stage, loaders swapped by `resize_dls`);
- baseline: stock fastai, `xresnet18` with its own head, `aug_transforms(size=...)` rebuilt per stage, `fit_one_cycle`, no imgaug.
Prints a markdown table: top-1 (and top-5) on the subset's val images and wall time of each.

    python bench/accuracy.py [--data PATH_OR_ARCHIVE] [--epochs 4,4,4] [--sizes 16,32,64] [--arch tiny] [--bs 64]

PATH defaults to $TINY_IMAGENET.
"""
import argparse, os, platform, subprocess, sys, tempfile, time, warnings
from pathlib import Path


def cpu_name():
    try:
        for l in Path('/proc/cpuinfo').read_text().splitlines():
            if l.startswith('model name'): return l.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown CPU'


def baseline(path, sizes, epochs, lr, bs, seed, num_workers):
    "Stock fastai: xresnet18, aug_transforms, fit_one_cycle per stage, loaders rebuilt at each size"
    from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, GrandparentSplitter, Resize, aug_transforms,
                                   Normalize, imagenet_stats, Learner, xresnet18, accuracy, top_k_accuracy, set_seed,
                                   LabelSmoothingCrossEntropyFlat, CrossEntropyLossFlat)
    from tiny_fastai.data import scan
    info = scan(path)
    names = info.names
    items = [f for f, _ in info.train + info.valid]
    lbl = {f: names[w] for f, w in info.train + info.valid}
    n_train = len(info.train)
    def dls_at(size):
        db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda f: lbl[f],
                       splitter=lambda o: (list(range(n_train)), list(range(n_train, len(items)))),
                       item_tfms=Resize(64), batch_tfms=[*aug_transforms(size=size, min_scale=0.75), Normalize.from_stats(*imagenet_stats)])
        return db.dataloaders(items, bs=bs, num_workers=num_workers)
    set_seed(seed, reproducible=True)
    dls = dls_at(sizes[0])
    learn = Learner(dls, xresnet18(n_out=dls.c), loss_func=CrossEntropyLossFlat(), metrics=[accuracy, top_k_accuracy])
    for size, n in zip(sizes, epochs):
        learn.dls = dls_at(size)
        learn.fit_one_cycle(n, lr)
    _, top1, top5 = learn.validate()
    return dict(top1=float(top1), top5=float(top5), params=sum(p.numel() for p in learn.model.parameters()))


def ours(path, sizes, epochs, lr, bs, seed, num_workers, arch, out, fast=True):
    "tiny_fastai's recipe at the same sizes and epochs"
    from fastai.vision.all import set_seed
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.learner import tiny_learner, progressive_fit, evaluate
    set_seed(seed, reproducible=True)
    dls = tiny_dls(path, size=sizes[0], bs=bs, seed=seed, num_workers=num_workers, cache=fast)
    learn = tiny_learner(dls, arch, path=out)
    progressive_fit(learn, [(s, n, lr) for s, n in zip(sizes, epochs)], resume=False)
    ev = evaluate(learn, size=sizes[-1], tta=False)
    return dict(top1=ev['top1'], top5=ev['top5'], params=learn.rules['params'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=os.environ.get('TINY_IMAGENET'), help='full Tiny ImageNet: archive or folder')
    p.add_argument('--subset', default=None, help='where to keep the 20-class subset (default: a temp folder)')
    p.add_argument('--sizes', default='16,32,64'); p.add_argument('--epochs', default='4,4,4')
    p.add_argument('--arch', default='tiny'); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--lr', type=float, default=3e-3); p.add_argument('--seed', type=int, default=42)
    p.add_argument('--num-workers', type=int, default=None); p.add_argument('--datablock', action='store_true', help='ours on the DataBlock path instead of the fast path'); p.add_argument('--classes', type=int, default=20)
    p.add_argument('--only', choices=['ours', 'baseline'], help='run one contender only')
    a = p.parse_args(argv)
    if not a.data: p.error('give --data or set TINY_IMAGENET to the full Tiny ImageNet')
    warnings.filterwarnings('ignore')
    from tiny_fastai.data import get_tiny_imagenet, make_subset
    sizes, epochs = [int(s) for s in a.sizes.split(',')], [int(e) for e in a.epochs.split(',')]
    tmp = Path(tempfile.mkdtemp(prefix='tiny-acc-'))
    full = get_tiny_imagenet(a.data, dest=tmp/'full') if not Path(a.data).is_dir() else get_tiny_imagenet(a.data)
    sub = Path(a.subset) if a.subset else tmp/f'subset{a.classes}'
    if not sub.exists(): make_subset(full, sub, n_classes=a.classes, n_train=500, n_val=50, seed=0)
    rows = []
    for name, fn in [('tiny_fastai: sep_xresnet_' + a.arch + ', imgaug, label smoothing, progressive_fit', 
                      lambda: ours(sub, sizes, epochs, a.lr, a.bs, a.seed, a.num_workers, a.arch, tmp/'ours', fast=not a.datablock)),
                     ('fastai baseline: xresnet18, aug_transforms, fit_one_cycle',
                      lambda: baseline(sub, sizes, epochs, a.lr, a.bs, a.seed, a.num_workers))]:
        if a.only and not name.startswith('tiny_fastai' if a.only == 'ours' else 'fastai'): continue
        t0 = time.time(); r = fn(); r['wall_s'] = time.time() - t0; r['name'] = name; rows.append(r)
        print(f"{name}: top-1 {r['top1']:.3f}, {r['wall_s']:.0f} s", flush=True)
    print(f"\n`python bench/accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores "
          f"({cpu_name()}), torch {__import__('torch').__version__}, {a.classes} classes x 500 train / 50 val, "
          f"sizes {a.sizes} px, epochs {a.epochs}, bs {a.bs}, lr {a.lr}\n")
    print('| recipe | params | top-1 | top-5 | wall time |\n|---|---|---|---|---|')
    for r in rows: print(f"| {r['name']} | {r['params']/1e6:.2f}M | {r['top1']:.3f} | {r['top5']:.3f} | {r['wall_s']:.0f} s |")


if __name__ == '__main__': main()
