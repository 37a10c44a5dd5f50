"""The training loop's cost per batch on the host: fastai's loop (with this package's callbacks) against the bare step.

Rows, measured in turn for `--rounds` rounds (medians reported), on the same model, batch size and image size:
- `bare step`: forward, loss, backward and the optimizer's step on one batch already in memory (plain tensors);
- `fit loop`: `time_steps` (a trial fit through fastai's loop: the loader, every callback, the recorder) as `tiny_learner` builds it;
- `fit loop, fastai tensor subclasses`: the same without `PlainTensors` (the model gets fastai's `TensorImage`).
The difference between a loop row and the bare step is what the loop adds per batch on the host. Augmentation is
off (`aug=None`) so that the data path is the array cache's reading and the batch transforms only.

Usage: python bench/loop.py --out OUT [--arch tiny] [--size 32] [--bs 64] [--rounds 3]; `--quick` for a test."""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/loop')
    p.add_argument('--arch', default='tiny'); p.add_argument('--size', type=int, default=32); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--rounds', type=int, default=3); p.add_argument('--batches', type=int, default=12)
    p.add_argument('--quick', action='store_true')
    a = p.parse_args(argv)
    if a.quick: a.rounds, a.batches, a.size, a.bs = 1, 3, 16, 16
    import torch
    from tiny_fastai.data import sample_path
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.fit import time_steps
    from tiny_fastai.callbacks import PlainTensors
    torch.set_num_threads(1)
    l0 = load()
    dls = tiny_dls(sample_path(), size=a.size, bs=a.bs, num_workers=0, cache=True, aug=None, seed=0, verbose=False)
    learn = tiny_learner(dls, a.arch, path=Path(tempfile.mkdtemp()), ckpt_every=float('inf'))
    torch.set_num_threads(1)
    x, y = [t.as_subclass(torch.Tensor) for t in dls.train.one_batch()]
    if learn.opt is None: learn.create_opt()
    def bare():
        learn.model.train()
        for i in range(2 + a.batches):
            if i == 2: t = time.perf_counter()
            loss = learn.loss_func(learn.model(x), y); loss.backward(); learn.opt.step(); learn.opt.zero_grad()
        return (time.perf_counter() - t)/a.batches
    def loop(plain=True):
        pt = [c for c in learn.cbs if isinstance(c, PlainTensors)]
        if not plain: learn.remove_cbs(pt)
        try: return time_steps(learn, a.size, n=a.batches, n_valid=1, warmup=2)['batch_s']
        finally:
            if not plain: learn.add_cbs(pt)
    rows = {'bare step': [], 'fit loop': [], 'fit loop, fastai tensor subclasses': []}
    for _ in range(a.rounds):
        rows['bare step'].append(bare()); rows['fit loop'].append(loop(True)); rows['fit loop, fastai tensor subclasses'].append(loop(False))
    med = {k: statistics.median(v) for k, v in rows.items()}
    res = dict(machine=machine(), load=f"{l0} -> {load()}", arch=a.arch, size=a.size, bs=a.bs, rounds=a.rounds, batches=a.batches,
               rows=[dict(variant=k, ms_per_batch=round(1e3*v, 2), host_ms_over_bare=round(1e3*(v - med['bare step']), 2))
                     for k, v in med.items()])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/'loop.json').write_text(json.dumps(res, indent=1) + '\n')
    md = [f"Machine: {res['machine']}; load average {res['load']}; {a.arch} at {a.size} px, batch {a.bs}, median of {a.rounds} round(s) of {a.batches} batches",
          "", "| variant | ms per batch | ms over the bare step |", "|---|---|---|"]
    md += [f"| {r['variant']} | {r['ms_per_batch']} | {r['host_ms_over_bare']} |" for r in res['rows']]
    (out/'loop.md').write_text('\n'.join(md) + '\n'); print('\n'.join(md))
    return res


if __name__ == '__main__': main()
