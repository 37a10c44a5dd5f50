"""The README's interactive quick start against the command line: seconds per epoch of the bundled sample, each way.

`python`: the README's "Interactive use" lines as a user types them (`tiny_dls(path, size=16, bs=64, cache=True)`, `tiny_learner`,
`learn.fit_one_cycle`), with the library's defaults for threads and loader workers; `cli`: `train_recipe` as
`tiny-fastai train` runs it, with the same size, batch, model and epochs. Each way trains `--epochs` epochs; the first
is a warm-up (workers start, caches fill) and the median of the others is reported, for `--rounds` rounds in turn.

Usage: python bench/quickstart.py --out OUT [--rounds 2] [--epochs 3]; `--quick` for a test."""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/quickstart'); p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--epochs', type=int, default=3); p.add_argument('--quick', action='store_true')
    a = p.parse_args(argv)
    if a.quick: a.rounds, a.epochs = 1, 2
    import torch
    from tiny_fastai.data import sample_path
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.learner import tiny_learner
    from tiny_fastai.recipe import train_recipe
    tmp, l0 = Path(tempfile.mkdtemp()), load()
    def python_way(i):
        dls = tiny_dls(sample_path(), size=16, bs=64, cache=True)  # the README's line
        learn = tiny_learner(dls, 'tiny', path=tmp/f'py{i}')
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.epochs, 3e-3)
        return [r['time_s'] for r in learn.run_progress.history[1:]], dls.train.num_workers, torch.get_num_threads()
    def cli_way(i):
        r = train_recipe('demo', out=tmp/f'cli{i}', sizes=[16], epochs=[a.epochs], lrs=[3e-3], tta=False)
        return [h['time_s'] for h in r.history[1:]], None, torch.get_num_threads()
    rows = {'python (README)': [], 'cli (train_recipe)': []}
    info = {}
    for i in range(a.rounds):
        for name, fn in (('python (README)', python_way), ('cli (train_recipe)', cli_way)):
            ts, workers, threads = fn(i); rows[name] += ts; info[name] = dict(workers=workers, torch_threads=threads)
    res = dict(machine=machine(), load=f"{l0} -> {load()}", epochs=a.epochs, rounds=a.rounds,
               rows=[dict(way=k, epoch_s=round(statistics.median(v), 2), **info[k]) for k, v in rows.items()])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/'quickstart.json').write_text(json.dumps(res, indent=1) + '\n')
    md = [f"Machine: {res['machine']}; load average {res['load']}; median epoch of the bundled sample at 16 px, batch 64, `tiny` "
          f"({a.rounds} round(s) of {a.epochs} epochs, the first of each left out)", "",
          "| way | s per epoch | loader workers | torch threads |", "|---|---|---|---|"]
    md += [f"| {r['way']} | {r['epoch_s']} | {r['workers'] if r['workers'] is not None else 'cpu_setup'} | {r['torch_threads']} |" for r in res['rows']]
    (out/'quickstart.md').write_text('\n'.join(md) + '\n'); print('\n'.join(md))
    return res


if __name__ == '__main__': main()
