"""The demo against stock fastai, side by side, on the bundled 10-class sample (1,000 train / 500 val images), on the CPU.

- ours: `train_recipe('demo')`, what `tiny-fastai train` runs with no option (loaders, training, evaluation, export);
- ours with the 1.6M-parameter `small` preset and twice the epochs (`--arch small --epochs 8,16`), against stock
  fastai's best;
- stock fastai, as a fastai user would start: a `DataBlock` with `aug_transforms(size=SIZE)`, `xresnet18`,
  `fit_one_cycle(EPOCHS, 3e-3)`; at 32 px (8 epochs) and at 64 px (16 epochs).
Prints one markdown table: top-1 on the 500 val images, the seconds of training (the epochs' times) and of the whole
run, and the load average before and after each. Rows run one after another in one process, alternating if `--repeat`.

    python bench/demo.py [--repeat 1] [--threads N]
"""
import argparse, os, platform, sys, time, tempfile, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import cpu_model, load, machine   # (and the checkout on the path)
import torch
warnings.filterwarnings('ignore')
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, aug_transforms, Normalize, imagenet_stats, Resize,
                               Learner, xresnet18, accuracy, CrossEntropyLossFlat, set_seed)
from tiny_fastai.data import scan, sample_path
from tiny_fastai.recipe import train_recipe


def stock(path, size, epochs, bs=64, lr=3e-3, seed=42, workers=None):
    "Stock fastai on the same images and labels: aug_transforms at `size`, xresnet18, fit_one_cycle"
    lay = scan(path)
    items = [f for f,_ in lay.train + lay.valid]
    lbl = {f: lay.names[w] for f,w in lay.train + lay.valid}
    n = len(lay.train)
    set_seed(seed, reproducible=True)
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda f: lbl[f],
                   splitter=lambda o: (list(range(n)), list(range(n, len(items)))),
                   item_tfms=Resize(64), batch_tfms=[*aug_transforms(size=size), Normalize.from_stats(*imagenet_stats)])
    dls = db.dataloaders(items, bs=bs, num_workers=workers)
    learn = Learner(dls, xresnet18(n_out=len(dls.vocab)), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    t = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    train_s = time.time() - t
    return dict(top1=learn.validate()[1], train_s=train_s)

def ours(out, seed=42, **kw):
    r = train_recipe('demo', out=out, seed=seed, restart=True, **kw)
    return dict(top1=r.top1, top1_tta=r.top1_tta, train_s=r.train_s)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeat', type=int, default=1, help='rounds of all rows')
    p.add_argument('--threads', type=int, default=None, help='PyTorch threads for the stock rows (ours sets its own)')
    a = p.parse_args(argv)
    path,out = sample_path(),Path(tempfile.mkdtemp(prefix='demo_bench_'))
    rows = []
    for k in range(a.repeat):
        for name,fn in (('tiny_fastai demo (`tiny-fastai train`)', lambda: ours(out/'ours')),
                        ('stock fastai: xresnet18, aug_transforms(size=32), fit_one_cycle(8, 3e-3)', lambda: stock(path, 32, 8)),
                        ('stock fastai: xresnet18, aug_transforms(size=64), fit_one_cycle(16, 3e-3)', lambda: stock(path, 64, 16)),
                        ('tiny_fastai, a larger model (`tiny-fastai train --arch small --epochs 8,16`)',
                         lambda: ours(out/'small', arch='small', epochs=(8,16)))):
            if a.threads and 'stock' in name: torch.set_num_threads(a.threads)
            l0,t = load(),time.time()
            r = fn()
            rows.append(dict(name=name, wall_s=time.time()-t, load=f'{l0} -> {load()}', **r))
            print(f"{name}: {rows[-1]}", flush=True)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
    print(f"\n{cpu}, {os.cpu_count()} cores, torch {torch.__version__}; `python bench/demo.py {' '.join(argv or sys.argv[1:])}`\n")
    print('| run | top-1 (500 val images) | TTA | training s | whole run s | load average (1 min) before -> after |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        tta = f"{r['top1_tta']:.3f}" if r.get('top1_tta') is not None else '-'
        print(f"| {r['name']} | {r['top1']:.3f} | {tta} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['load']} |")

if __name__ == '__main__': main()
