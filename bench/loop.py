"""The training loop's host cost per batch: a bare PyTorch loop, stock fastai's `Learner` and this package's learner as
the budgeted sprint runs it, side by side on the same loader, model, batch size and image sizes.

The model is near free (global average pool + a 1x1 conv to the classes), so what each row measures is the host's
work per batch: the loader (the project's own array cache, `tiny_dls(..., cache=True)`, no augmentation, no workers, one
PyTorch thread: the same for every row), then what the loop adds. Each row trains `--epochs` epochs per round (the first is warm-up
and not counted); a row's figure is the CPU time of this process in the train passes over their batches (wall time is
shown too: on a shared machine it follows the load, the CPU time much less), median over `--rounds` rounds run in
turn (bare, stock, project, ...), and its cost over the bare loop the median of its differences to the bare loop of
the same round. Validation is not timed.

- `bare`: `for x,y in dls.train:` (as plain tensors) `F.cross_entropy(model(x), y, label_smoothing=ls); backward; SGD step; zero_grad`;
- `stock fastai`: `Learner(dls, model, loss_func=LabelSmoothingCrossEntropyFlat(), opt_func=SGD, metrics=[accuracy,
  top_k_accuracy])`, `fit_one_cycle` (without its progress bar, which prints in a terminal);
- `project`: `tiny_learner` with the sprint's settings (opt sgd, weight decay on conv weights only, label smoothing 0.1,
  checkpoint at the fit's end only, NaN guard, plain progress lines, validation at the stage's end only) and the
  one-cycle-across-stages schedule of `progressive_fit(sched='one')` through `ScheduleTable(cycle_slice(...))`;
- `project, fastai ParamScheduler` (with `--fastai-sched`): the same with fastai's `ParamScheduler`.

Usage: python bench/loop.py --data path/to/tiny-imagenet-200.tar.gz [--sizes 8,32] [--bs 512] [--rounds 3] [--out OUT]
       python bench/loop.py --quick   (a test on the CPU, in seconds: the bundled sample at batch 16)"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, load, subset


def free_model(n_out:int):
    "Global average pool + a 1x1 conv: a model whose forward and backward cost next to nothing"
    from torch import nn
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, n_out, 1), nn.Flatten())

def _sync(dev):
    import torch
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

def bare_row(dls, ls:float, lr:float):
    "A function that trains one epoch of the bare loop and returns (seconds, batches)"
    import torch, torch.nn.functional as F
    model = free_model(len(dls.vocab)).to(dls.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    def epoch(dls):
        model.train(); n = 0
        t, c = time.perf_counter(), time.process_time()
        for x,y in dls.train:
            x,y = x.as_subclass(torch.Tensor),y.as_subclass(torch.Tensor)   # fastai's types dispatch every op
            loss = F.cross_entropy(model(x), y, label_smoothing=ls)
            loss.backward(); opt.step(); opt.zero_grad(); n += 1
        _sync(dls.device)
        return time.perf_counter() - t, time.process_time() - c, n
    return epoch

def _pass_timer():
    "A callback that records each train pass's seconds and batches"
    from fastai.vision.all import Callback
    class PassTimer(Callback):
        order = -100
        def __init__(self): self.rows = []
        def before_train(self): self.t,self.c = time.perf_counter(),time.process_time()
        def after_train(self):
            _sync(self.dls.device); self.rows.append((time.perf_counter() - self.t, time.process_time() - self.c, self.n_iter))
    return PassTimer()

def stock_row(dls, ls:float, lr:float, epochs:int):
    "A function that fits stock fastai's `Learner` for `epochs` and returns its train passes' (seconds, batches)"
    from fastai.vision.all import Learner, LabelSmoothingCrossEntropyFlat, SGD, accuracy, top_k_accuracy
    learn = Learner(dls, free_model(len(dls.vocab)), loss_func=LabelSmoothingCrossEntropyFlat(eps=ls), opt_func=SGD,
                    metrics=[accuracy, top_k_accuracy], wd=5e-4)
    def fit(dls):
        learn.dls, timer = dls, _pass_timer()
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=timer)
        return timer.rows
    return fit

def project_row(dls, ls:float, lr:float, epochs:int, fastai_sched:bool=False):
    "A function that fits the project's learner as the budgeted sprint runs a stage, and returns its train passes"
    import contextlib, io
    from fastai.vision.all import ParamScheduler
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.fit import cycle_slice
    from tiny_fastai.callbacks import ValidEvery
    sched_cls = ParamScheduler
    try: from tiny_fastai.callbacks import ScheduleTable
    except ImportError: ScheduleTable = None
    if not fastai_sched and ScheduleTable is not None: sched_cls = ScheduleTable
    with contextlib.redirect_stdout(io.StringIO()):
        learn = tiny_learner(dls, 'tiny', opt='sgd', ls=ls, wd=5e-4, path=Path(tempfile.mkdtemp(prefix='loop-bench-')),
                             ckpt_every=float('inf'))   # as `train_recipe` with a budget: checkpoints at stage ends
    learn.model, learn.opt = free_model(len(dls.vocab)).to(dls.device), None
    def fit(dls):
        learn.dls, timer = dls, _pass_timer()
        sched = sched_cls(cycle_slice(lr, 0., 1., pct_start=0.15))   # `_fit_stage` with sched='one', one stage
        with contextlib.redirect_stdout(io.StringIO()):   # the progress lines
            learn.fit(epochs, cbs=[sched, timer, ValidEvery(10**9)])
        return timer.rows
    return fit

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', help='Tiny ImageNet (archive or folder); a subset of --classes x --n-train images is made from it')
    p.add_argument('--work-dir', default=None, help='where the subset and its cache are kept (default: a temp folder)')
    p.add_argument('--out', default='runs/loop')
    p.add_argument('--sizes', default='8,32'); p.add_argument('--bs', type=int, default=512)
    p.add_argument('--classes', type=int, default=100); p.add_argument('--n-train', type=int, default=256)
    p.add_argument('--epochs', type=int, default=3, help='per round and row; the first is warm-up')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--fastai-sched', action='store_true', help="also a row of the project's learner with fastai's ParamScheduler")
    p.add_argument('--device', default=None, help='cpu or cuda (default: cuda when there is one)')
    p.add_argument('--quick', action='store_true', help='a test on the CPU: the bundled sample, batch 16, 8 and 16 px, one round')
    a = p.parse_args(argv)
    import torch
    from tiny_fastai.core import get_device
    from tiny_fastai.data import sample_path
    from tiny_fastai.loaders import tiny_dls, resize_dls
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix='loop-bench-'))
    if a.quick: path, a.sizes, a.bs, a.rounds, a.epochs = sample_path(), '8,16', 16, 1, 2
    elif a.data is None: p.error('give --data (the Tiny ImageNet archive or folder), or --quick')
    else: path = subset(a.data, dest=work/f'subset{a.classes}x{a.n_train}', classes=a.classes, n_train=a.n_train, n_val=10, tmp=work)
    sizes = [int(s) for s in a.sizes.split(',')]
    dev = get_device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    l0 = load()
    dls0 = tiny_dls(path, size=sizes[0], bs=a.bs, cache=True, cache_dir=work/'cache', aug=None, num_workers=0, seed=0,
                    device=dev, verbose=False)
    torch.set_num_threads(1)   # the model costs nothing: threads would only wait on each other on a shared machine
    ls, lr = 0.1, 0.4
    rows = {'bare PyTorch loop': bare_row(dls0, ls, lr), 'stock fastai Learner': stock_row(dls0, ls, lr, a.epochs),
            'project learner (sprint)': project_row(dls0, ls, lr, a.epochs)}
    if a.fastai_sched: rows["project learner, fastai's ParamScheduler"] = project_row(dls0, ls, lr, a.epochs, fastai_sched=True)
    ms, wall = {(k, s): [] for k in rows for s in sizes}, {(k, s): [] for k in rows for s in sizes}
    for s in sizes:
        dls = resize_dls(dls0, s)
        for _ in range(a.rounds):
            for k, f in rows.items():
                passes = [f(dls) for _ in range(a.epochs)] if k.startswith('bare') else f(dls)
                t, c, n = (sum(p[i] for p in passes[1:]) for i in range(3))
                ms[(k, s)].append(1e3*c/n); wall[(k, s)].append(1e3*t/n)
    med = {ks: statistics.median(v) for ks, v in ms.items()}
    bare = 'bare PyTorch loop'
    over = {(k, s): statistics.median(a - b for a, b in zip(ms[(k, s)], ms[(bare, s)])) for k, s in ms}   # paired by round
    res = dict(machine=machine(), device=str(dev), load=f"{l0} -> {load()}", bs=a.bs, sizes=sizes, rounds=a.rounds,
               epochs=a.epochs, batches_per_epoch=len(dls0.train), train_images=len(dls0.train_ds),
               command='python bench/loop.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
               rows=[dict(variant=k, **{f'ms_{s}px': round(med[(k, s)], 3) for s in sizes},
                          **{f'over_bare_{s}px': round(over[(k, s)], 3) for s in sizes},
                          **{f'rounds_{s}px': [round(v, 3) for v in ms[(k, s)]] for s in sizes},
                          **{f'wall_ms_{s}px': round(statistics.median(wall[(k, s)]), 3) for s in sizes}) for k in rows])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/'loop.json').write_text(json.dumps(res, indent=1) + '\n')
    md = [f"Host CPU ms per batch of {a.bs} ({res['train_images']:,} train images, {res['batches_per_epoch']} batches an epoch), "
          f"median of {a.rounds} round(s) of {a.epochs-1} timed epoch(s); {res['machine']}; device {dev}; load average {res['load']}",
          f"Command: `{res['command']}`", "",
          "| loop | " + ' | '.join(f'CPU ms/batch at {s} px | over bare at {s} px | wall ms/batch at {s} px' for s in sizes) + " |",
          "|---|" + '---|---|---|'*len(sizes)]
    md += [f"| {r['variant']} | " + ' | '.join(f"{r[f'ms_{s}px']:.2f} | {r[f'over_bare_{s}px']:+.2f} | {r[f'wall_ms_{s}px']:.1f}" for s in sizes) + ' |'
           for r in res['rows']]
    (out/'loop.md').write_text('\n'.join(md) + '\n'); print('\n'.join(md))
    return res


if __name__ == '__main__': main()
