"""Images/second of a training step (forward + backward + SGD step) for each tiny_fastai preset and for fastai's
xresnet18/xresnet34, all in one process, on whatever device is available (CPU here): `common.train_step`, timed
round-robin (`common.race_times`) so that load from other processes hits every model alike.

Usage: python bench/models.py [--size 64] [--bs 64] [--iters 5] [--warmup 1] [--archs tiny small ...] [--device cpu]
       python bench/models.py --quick   (a test on a CPU, in seconds: tiny, small and xresnet18 at 16 px, batch 4, 2 steps)
Prints a markdown table, the command line and the machine it ran on."""
import argparse, os, statistics, sys, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import command, load, machine, race_times, train_step   # the shared harness (and the checkout on the path)
import torch
from fastai.vision.models.xresnet import xresnet18, xresnet34
from tiny_fastai.models import ARCHS, count_macs

warnings.filterwarnings('ignore')
FASTAI = {'xresnet18 (fastai)': xresnet18, 'xresnet34 (fastai)': xresnet34}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--iters', type=int, default=5, help='timed steps per model, taken round-robin across models')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--archs', nargs='+', default=[*ARCHS, *FASTAI], help=f'any of {[*ARCHS, *FASTAI]}')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: tiny, small and xresnet18 at 16 px, batch 4, 1 warm-up + 2 timed steps')
    a = p.parse_args(argv)
    if a.quick: a.size,a.bs,a.iters,a.warmup,a.archs,a.device = 16,4,2,1,['tiny', 'small', 'xresnet18'],'cpu'
    device,load0 = torch.device(a.device),load()
    steps,stats = {},{}
    for name in a.archs:
        f = ARCHS.get(name) or FASTAI.get(name) or FASTAI.get(f'{name} (fastai)')
        if f is None: p.error(f'unknown arch {name!r}; known: {[*ARCHS, *FASTAI]}')
        torch.manual_seed(0)
        m = f(n_out=200)
        stats[name] = sum(o.numel() for o in m.parameters()),count_macs(m, size=a.size)
        steps[name] = train_step(m, a.bs, a.size, device)
    times = race_times(steps, a.iters, a.warmup, device)
    rate = {n: a.bs/statistics.median(t) for n,t in times.items()}
    ref = next((n for n in rate if n.startswith('xresnet18')), None)
    dev = torch.cuda.get_device_name(device) if device.type=='cuda' else 'CPU'
    print(f'`{command(__file__, argv)}`')
    print(f'\nMachine: {dev}, {machine()}, {torch.get_num_threads()} threads; train step (forward + backward + SGD, '
          f'`common.train_step`) at {a.size}px, batch {a.bs}, {a.warmup} warm-up + {a.iters} timed steps per model, '
          f'round-robin; load average {load0} at the start, {load()} at the end\n')
    fmt = lambda v: f'{v:,.0f}' if v>=100 else f'{v:.1f}'
    print(f'| arch | params | MACs/image at {a.size}px | train images/s (median step) | best step |'
          + (' vs xresnet18 |' if ref else '') + '\n|---|---|---|---|---|' + ('---|' if ref else ''))
    for n,(params,macs) in stats.items():
        print(f'| {n} | {params/1e6:.2f}M | {macs/1e6:,.0f}M | {fmt(rate[n])} | {fmt(a.bs/min(times[n]))} |'
              + (f' {rate[n]/rate[ref]:.2f}x |' if ref else ''))
    return [dict(arch=n, params=params, macs=macs, ips=rate[n], best_ips=a.bs/min(times[n]), vs_xresnet18=rate[n]/rate[ref] if ref else None)
            for n,(params,macs) in stats.items()]

if __name__ == '__main__': main()
