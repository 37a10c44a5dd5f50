"""Benchmark the Tiny ImageNet loaders: time to build `tiny_dls` on the full dataset, and images/second of one full pass
over the training loader (default augmentation) at each size, printed as a markdown table.

    python bench/loaders.py [PATH] [--sizes 64 32 16] [--bs 128] [--num-workers N] [--aug default|none] [--max-batches N]

PATH: the Tiny ImageNet archive or folder (default: $TINY_IMAGENET)."""
import argparse, os, platform, subprocess, sys, time, warnings
warnings.filterwarnings('ignore', category=FutureWarning)
from common import cpu_model   # bench/common.py (and the checkout on the path)
import torch, fastai
from tiny_fastai.data import get_tiny_imagenet
from tiny_fastai.loaders import tiny_dls, resize_dls




def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path', nargs='?', default=os.environ.get('TINY_IMAGENET'))
    p.add_argument('--sizes', type=int, nargs='+', default=[64])
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--num-workers', type=int, default=None)
    p.add_argument('--aug', default='default', choices=['default', 'none'])
    p.add_argument('--max-batches', type=int, default=None, help='stop each pass after this many batches (default: full pass)')
    a = p.parse_args()
    if not a.path: p.error('give the Tiny ImageNet archive or folder as PATH, or set TINY_IMAGENET')
    load0 = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    t = time.perf_counter(); path = get_tiny_imagenet(a.path); t_get = time.perf_counter() - t
    t = time.perf_counter()
    dls = tiny_dls(path, bs=a.bs, num_workers=a.num_workers, aug=None if a.aug == 'none' else 'default')
    t_build = time.perf_counter() - t
    rows = []
    for sz in a.sizes:
        d = resize_dls(dls, sz)
        n, nb, t = 0, 0, time.perf_counter()
        for xb, yb in d.train:
            n += len(xb); nb += 1
            if a.max_batches and nb >= a.max_batches: break
        dt = time.perf_counter() - t
        rows.append((sz, n, dt, n/dt))
    nw = dls.train.fake_l.num_workers
    print(f"command: `{' '.join(['python'] + sys.argv)}`  ")
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load average {load0:.1f} at start; torch {torch.__version__}, "
          f"fastai {fastai.__version__}, Python {platform.python_version()}  ")
    print(f"data: {path} ({len(dls.train_ds):,} train / {len(dls.valid_ds):,} valid images); get_tiny_imagenet {t_get:.1f} s; "
          f"tiny_dls build {t_build:.1f} s; bs {a.bs}, {nw} workers, augmentation {a.aug}\n")
    print('| size | images | seconds | images/s |')
    print('|---:|---:|---:|---:|')
    for sz, n, dt, ips in rows: print(f'| {sz} | {n:,} | {dt:.1f} | {ips:,.0f} |')


if __name__ == '__main__': main()
