"""Ablation of the recipe changes on a CPU proxy (issue #10: "CPU proxies, measured here").

The GPU recipes (`sprint`, `full` in `tiny_fastai.plan.RECIPES`) changed several things at once. This script measures
each change on its own, cumulatively, on the 20-class subset of Tiny ImageNet (500 train and 50 val images per class,
made with `make_subset(seed=0)`), same model preset, same stages (sizes and epochs), same seed for every row:

- (a) baseline: `sched='stages'` (one `fit_one_cycle` per stage, `--lr` at each stage), fastai's Adam, no mix, no EMA;
- (b) `sched='one'`: one cycle across all stages (peak `--lr`);
- (c) + `opt='sgd'`: Nesterov SGD, momentum 0.9, weight decay 5e-4 (not on norms and biases), peak `--sgd-lr`;
- (d) + `mix='mixcut'`: MixUp or CutMix on each batch (`MixCut`, off for the last 5% of training);
- (e) + `ema=--ema`: the exponential moving average of the weights is the final model (`apply_ema`).

For the final model of each row: top-1 plain, with flip TTA and with fastai's augmentation TTA (`evaluate(tta=...)`,
at the last stage's size). With several `--seeds` every row runs once per seed (all rows for the first seed, then the
next), and the table gives the mean with each seed's value; the spread between seeds is the noise to compare with.

    python bench/ablation.py --data PATH_OR_ARCHIVE [--subset DIR] [--arch tiny] [--sizes 16,32,64] [--epochs 2,2,4]
                             [--lr 3e-3] [--sgd-lr 0.1] [--ema 0.995] [--seeds 42,1] [--rows abcde] [--threads 1]

    python bench/ablation.py --quick   # a test on a CPU, in seconds: 5 classes of the bundled sample, 16/24 px, 1 epoch each

PATH defaults to $TINY_IMAGENET.
"""
import argparse, json, os, sys, tempfile, time, warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_model as cpu_name, load, subset, QUICK_SUBSET   # bench/common.py (and the checkout on the path)

ROWS = {  # cumulative: each row adds one change to the row before it
    'a': dict(label='(a) baseline: one-cycle per stage, Adam', sched='stages', opt='adam', mix=None, ema=None),
    'b': dict(label="(b) sched='one' (one cycle across stages)", sched='one', opt='adam', mix=None, ema=None),
    'c': dict(label="(c) + opt='sgd'", sched='one', opt='sgd', mix=None, ema=None),
    'd': dict(label="(d) + mix='mixcut'", sched='one', opt='sgd', mix='mixcut', ema=None),
    'e': dict(label='(e) + EMA', sched='one', opt='sgd', mix='mixcut', ema=True),
}


def run_row(sub, row, a, seed, out):
    "Train one row of the ablation from scratch and evaluate it plain, with flip TTA and with augmentation TTA"
    from fastai.vision.all import set_seed
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.fit import progressive_fit
    from tiny_fastai.evaluate import evaluate
    from tiny_fastai.callbacks import apply_ema
    sizes, epochs = [int(s) for s in a.sizes.split(',')], [int(e) for e in a.epochs.split(',')]
    lr = a.sgd_lr if row['opt'] == 'sgd' else a.lr
    t0 = time.time()
    set_seed(seed, reproducible=True)
    dls = tiny_dls(sub, size=sizes[0], bs=a.bs, seed=seed, num_workers=a.num_workers, cache=True)
    learn = tiny_learner(dls, a.arch, mix=row['mix'], opt=row['opt'], ema=a.ema if row['ema'] else None, path=out)
    with learn.no_bar():
        progressive_fit(learn, [(s, n, lr) for s, n in zip(sizes, epochs)], resume=False, sched=row['sched'], pct_start=a.pct_start)
    train_s = time.time() - t0
    cbs = sorted(type(c).__name__ for c in learn.cbs)   # what the row really trained with (MixCut, EMA)
    apply_ema(learn)   # no-op without EMA
    t1 = time.time()
    flip = evaluate(learn, size=sizes[-1], tta='flip')
    aug = evaluate(learn, size=sizes[-1], tta='aug', n=a.tta_n)
    hist = learn.run_progress.history
    return dict(top1=flip['top1'], top5=flip['top5'], top1_flip=flip['top1_tta'], top1_aug=aug['top1_tta'],
                top1_aug_check=aug['top1'], lr=lr, train_s=train_s, eval_s=time.time() - t1, n_valid=flip['n_valid'],
                last_train_loss=hist[-1].get('train_loss') if hist else None, params=learn.rules['params'],
                steps=len(dls.train) * sum(epochs), opt=learn.opt_name, epochs_run=len(hist), cbs=cbs)


def table(res, rows, seeds):
    f = lambda vs: f"{sum(vs)/len(vs):.3f}" + (f" ({', '.join(f'{v:.3f}' for v in vs)})" if len(vs) > 1 else '')
    out = ['| row | opt (peak lr) | top-1 | top-1, flip TTA | top-1, aug TTA | top-5 | train time |', '|---|---|---|---|---|---|---|']
    for k in rows:
        rs = [res[(k, s)] for s in seeds if (k, s) in res]
        if not rs: continue
        opt = f"{ROWS[k]['opt']} ({rs[0]['lr']:g})"
        out.append(f"| {ROWS[k]['label']} | {opt} | {f([r['top1'] for r in rs])} | {f([r['top1_flip'] for r in rs])} | "
                   f"{f([r['top1_aug'] for r in rs])} | {f([r['top5'] for r in rs])} | "
                   f"{sum(r['train_s'] for r in rs)/len(rs):.0f} s |")
    return '\n'.join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=os.environ.get('TINY_IMAGENET'), help='full Tiny ImageNet: archive or folder')
    p.add_argument('--subset', default=None, help='where to keep the 20-class subset (default: a temp folder)')
    p.add_argument('--classes', type=int, default=20)
    p.add_argument('--arch', default='tiny'); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--sizes', default='16,32,64'); p.add_argument('--epochs', default='2,2,4')
    p.add_argument('--lr', type=float, default=3e-3, help="Adam's peak lr (rows a, b)")
    p.add_argument('--sgd-lr', type=float, default=0.1, help="SGD's peak lr (rows c-e)")
    p.add_argument('--pct-start', type=float, default=0.25)
    p.add_argument('--ema', type=float, default=0.995, help='EMA decay per step (row e)')
    p.add_argument('--tta-n', type=int, default=4, help='augmented passes of the aug TTA')
    p.add_argument('--seeds', default='42'); p.add_argument('--rows', default='abcde')
    p.add_argument('--num-workers', type=int, default=1); p.add_argument('--threads', type=int, default=None)
    p.add_argument('--json', default=None, help='also write every result to this JSON file')
    p.add_argument('--n-train', type=int, default=500, help='train images per class of the subset')
    p.add_argument('--n-val', type=int, default=50, help='val images per class of the subset')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: 5 classes of the bundled sample (20 train / 10 val each), '
                   'sizes 16,24, 1 epoch each, bs 32, 1 aug TTA pass, no loader workers')
    a = p.parse_args(argv)
    if a.quick:
        a.data,a.subset,a.sizes,a.epochs,a.bs,a.tta_n,a.num_workers = None,None,'16,24','1,1',32,1,0
        a.classes,a.n_train,a.n_val = QUICK_SUBSET['classes'],QUICK_SUBSET['n_train'],QUICK_SUBSET['n_val']
    elif not a.data and not a.subset: p.error('give --data or set TINY_IMAGENET to the full Tiny ImageNet')
    warnings.filterwarnings('ignore')
    import torch, fastai
    if a.threads: torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix='tiny-abl-'))
    sub = subset(a.data, a.subset, classes=a.classes, n_train=a.n_train, n_val=a.n_val, tmp=tmp)   # bench/common.py
    seeds, rows = [int(s) for s in a.seeds.split(',')], [r for r in a.rows if r in ROWS]
    load0, t0, res = load(', '), time.time(), {}
    for seed in seeds:
        for k in rows:
            r = run_row(sub, ROWS[k], a, seed, tmp/f'{k}-{seed}')
            res[(k, seed)] = r
            print(f"{ROWS[k]['label']}, seed {seed}: top-1 {r['top1']:.3f}, flip {r['top1_flip']:.3f}, aug {r['top1_aug']:.3f}, "
                  f"train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s; load average {load(', ')}", flush=True)
            if a.json: Path(a.json).write_text(json.dumps({f'{k}-{s}': v for (k, s), v in res.items()}, indent=1) + '\n')
    r0 = next(iter(res.values()))
    print(f"\n`python bench/ablation.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {os.cpu_count()} cores "
          f"({cpu_name()}), torch {torch.__version__}, fastai {fastai.__version__}, {torch.get_num_threads()} torch thread(s), "
          f"{a.num_workers} loader worker(s); {a.classes} classes x {a.n_train} train / {r0['n_valid']} val images; sep_xresnet_{a.arch} "
          f"({r0['params']:,} params), sizes {a.sizes} px x epochs {a.epochs} ({r0['steps']} steps of bs {a.bs}), "
          f"pct_start {a.pct_start}, label smoothing 0.1, EMA decay {a.ema}, aug TTA n={a.tta_n}, seeds {a.seeds}; "
          f"{time.time()-t0:.0f} s in all; load average {load0} at the start, {load(', ')} at the end\n")
    print(table(res, rows, seeds))
    if len(seeds) > 1:
        d = [abs(res[(k, seeds[0])]['top1'] - res[(k, seeds[1])]['top1']) for k in rows if (k, seeds[1]) in res]
        if d: print(f"\nseed noise: |top-1(seed {seeds[0]}) - top-1(seed {seeds[1]})| over the rows: mean {sum(d)/len(d):.3f}, max {max(d):.3f}")
    return res


if __name__ == '__main__': main()
