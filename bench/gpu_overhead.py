"""Where the `full` recipe's per-batch time goes at 32 px on a GPU: one epoch of `train_recipe('full')` (eager) with and
without MixCut and EMA, measured with bench/gpu.py's per-epoch clock (train images/s after the first 10 batches).

Usage: python bench/gpu_overhead.py DATA --work-dir W --out OUT   (W: bench/gpu.py's work dir, whose cache it reuses)"""
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu as gb   # bench/gpu.py: Clock, and the checkout's tiny_fastai
from tiny_fastai.data import get_tiny_imagenet
from tiny_fastai.recipe import train_recipe

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data'); p.add_argument('--work-dir', required=True); p.add_argument('--out', required=True)
    p.add_argument('--size', type=int, default=32); p.add_argument('--skip', type=int, default=10); p.add_argument('--workers', type=int, default=15)
    a = p.parse_args(argv)
    work,out = Path(a.work_dir),Path(a.out); out.mkdir(parents=True, exist_ok=True)
    src = Path(a.data)
    path = get_tiny_imagenet(src) if src.is_dir() else get_tiny_imagenet(src, dest=work/'data')
    rows = []
    for name,kw in [('full, eager', {}), ('no MixCut', dict(mix=None)), ('no EMA', dict(ema=None)), ('neither', dict(mix=None, ema=None))]:
        clock,t = gb.Clock(a.skip),time.time()
        train_recipe('full', out=work/'overhead', data=path, epochs=[1], sizes=[a.size], lrs=[0.2], compile=False, restart=True,
                     num_workers=a.workers, tta=False, cbs=[clock], dls_kwargs=dict(cache_dir=work/'cache'), **kw)
        rows.append(dict(variant=name, size=a.size, **{k: clock.rows[-1][k] for k in ('epoch_s', 'train_ips', 'valid_s')}, wall_s=round(time.time()-t, 1)))
        print(rows[-1], flush=True)
        (out/'gpu_overhead.json').write_text(json.dumps(rows, indent=1) + '\n')
    return rows

if __name__ == '__main__':
    main(); sys.stdout.flush(); os._exit(0)   # workers/compile threads must not hold the exit
