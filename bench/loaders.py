"""Benchmark the Tiny ImageNet loaders: time to build `tiny_dls` on the full dataset, and images/second of one full pass
over the training loader (default augmentation) at each size, printed as a markdown table.

    python bench/loaders.py [PATH] [--sizes 64 32 16] [--bs 128] [--num-workers N] [--aug default|none] [--max-batches N]
    python bench/loaders.py --quick   # a test on a CPU, in seconds: the bundled sample, 16 and 32 px, 3 batches of 32, no workers

PATH: the Tiny ImageNet archive or folder (default: $TINY_IMAGENET)."""
import argparse, os, platform, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import cpu_model   # bench/common.py (and the checkout on the path)
import torch, fastai
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.data import sample_path
from tiny_fastai.loaders import tiny_dls, resize_dls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path', nargs='?', default=os.environ.get('TINY_IMAGENET'))
    p.add_argument('--sizes', type=int, nargs='+', default=[64])
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--num-workers', type=int, default=None)
    p.add_argument('--aug', default='default', choices=['default', 'none'])
    p.add_argument('--max-batches', type=int, default=None, help='stop each pass after this many batches (default: full pass)')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: the bundled sample, sizes 16 32, bs 32, 3 batches, no workers')
    a = p.parse_args(argv)
    if a.quick: a.path,a.sizes,a.bs,a.num_workers,a.max_batches = str(sample_path()),[16, 32],32,0,3
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
        rows.append((sz, n, dt, n/dt, xb.shape[-1]))
    nw = dls.train.fake_l.num_workers
    print(f"command: `{' '.join(['python', 'bench/loaders.py'] + (sys.argv[1:] if argv is None else argv))}`  ")
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load average {load0:.1f} at start; torch {torch.__version__}, "
          f"fastai {fastai.__version__}, Python {platform.python_version()}  ")
    print(f"data: {path} ({len(dls.train_ds):,} train / {len(dls.valid_ds):,} valid images); get_tiny_imagenet {t_get:.1f} s; "
          f"tiny_dls build {t_build:.1f} s; bs {a.bs}, {nw} workers, augmentation {a.aug}\n")
    print('| size | images | seconds | images/s |')
    print('|---:|---:|---:|---:|')
    for sz, n, dt, ips, _ in rows: print(f'| {sz} | {n:,} | {dt:.1f} | {ips:,.0f} |')
    return [dict(size=sz, images=n, seconds=dt, ips=ips, px=px, bs=a.bs, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), workers=nw)
            for sz, n, dt, ips, px in rows]


if __name__ == '__main__': main()
