"""Loader throughput: images/second over one full pass of the Tiny ImageNet train set, fastai's DataBlock path
(`tiny_dls`) against the array cache (`tiny_dls(cache=True)`), with the same augmentation, at several image sizes,
and the seconds each path takes to build its loaders.

Usage: python bench/loaders.py [DATA] [--sizes 16 32 64] [--bs 128] [--workers 2] [--aug default]
                               [--paths datablock fast fast-imgaug] [--cache-dir DIR] [--max-batches N]
       python bench/loaders.py --quick [--cache-dir DIR]   (a test on a CPU, in seconds: the bundled sample, 16 and
       32 px, 3 batches of 32 per pass, no workers, every path)
DATA: an extracted Tiny ImageNet folder or archive (default: $TINY_IMAGENET).
The time counts the whole pass (worker start-up included, the one-off cache build excluded, reported apart) and the
batch transforms (`IntToFloatTensor`, `BatchResize`, `Normalize`) on the loader's device. Beside images/second it
reports the CPU time per image of the main process and the workers together, which depends much less on what else
runs on the machine. Prints a markdown table,
the command line and the machine (with its load average: on a shared machine the numbers move with the load).
The main process runs the batch transforms with `--threads` PyTorch threads (default 1: with 2 cores and 2 loader
workers, more threads only spin; the same setting for both paths)."""
import argparse, gc, os, platform, resource, sys, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import cpu_model, load, machine   # bench/common.py (and the checkout on the path)
import torch
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.data import sample_path
from tiny_fastai.loaders import tiny_dls

warnings.filterwarnings('ignore')
PATHS = {'datablock': "DataBlock (`tiny_dls`)", 'fast': "fast (`tiny_dls(cache=True)`)",
         'fast-imgaug': "fast, imgaug's own executor (`aug_impl='imgaug'`)"}


def cpu_s():
    "CPU seconds used so far by this process and its finished children (the loader workers, once a pass is over)"
    return sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for a in ('ru_utime', 'ru_stime'))

def one_pass(dl, max_batches=None):
    "Images, wall seconds and CPU seconds (main process and workers) of one pass over `dl` (at most `max_batches` batches)"
    n,t0,c0 = 0,time.perf_counter(),cpu_s()
    it = iter(dl)
    for i,(x,y) in enumerate(it):
        n += len(x)
        if max_batches and i+1 >= max_batches: break
    del it
    if hasattr(dl, 'close_workers'): dl.close_workers()   # workers kept between passes (cache=True) end here too
    gc.collect()   # ends the workers, so that their CPU time is counted
    return n, time.perf_counter()-t0, cpu_s()-c0

def make(kind, path, size, a):
    kw = dict(size=size, bs=a.bs, aug=None if a.aug == 'none' else a.aug, num_workers=a.workers, seed=0, device='cpu')
    if kind == 'datablock': return tiny_dls(path, **kw)
    return tiny_dls(path, cache=True, cache_dir=a.cache_dir, aug_impl='imgaug' if kind == 'fast-imgaug' else 'fast', **kw)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='archive or folder (default: $TINY_IMAGENET)')
    p.add_argument('--sizes', type=int, nargs='+', default=[16, 32, 64])
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--workers', type=int, default=None, help='loader processes (default: fastai\'s, the number of CPUs up to 16)')
    p.add_argument('--aug', default='default', help="'default', 'none' or a strength")
    p.add_argument('--paths', nargs='+', default=['datablock', 'fast'], choices=list(PATHS))
    p.add_argument('--cache-dir', default=None, help='where the fast path keeps its arrays (default: next to the data)')
    p.add_argument('--max-batches', type=int, default=None, help='stop each pass after this many batches (quick runs)')
    p.add_argument('--threads', type=int, default=1, help="PyTorch threads of the main process, which runs the batch "
                   "transforms here (default 1: the loader workers already use every core; 0 leaves PyTorch's default)")
    p.add_argument('--quick', action='store_true', help='a test on a CPU: the bundled sample, sizes 16 32, bs 32, 3 batches per pass, '
                   'no workers, all three paths')
    a = p.parse_args(argv)
    if a.quick: a.data,a.sizes,a.bs,a.workers,a.max_batches,a.paths = str(sample_path()),[16, 32],32,0,3,list(PATHS)
    if a.data is None: p.error('give the Tiny ImageNet archive or folder (or set TINY_IMAGENET)')
    if a.threads: torch.set_num_threads(a.threads)
    try: a.aug = float(a.aug)
    except ValueError: pass
    path = get_tiny_imagenet(a.data)
    cmd = 'python ' + ' '.join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    if any(k.startswith('fast') for k in a.paths):
        t0 = time.perf_counter(); tiny_dls(path, bs=a.bs, cache=True, cache_dir=a.cache_dir, num_workers=0, device='cpu')
        print(f"fast path: cache ready in {time.perf_counter()-t0:.1f} s (decoded once, then reused)", flush=True)
    res = {}
    for size in a.sizes:
        for kind in a.paths:
            t0 = time.perf_counter(); dl = make(kind, path, size, a).train; build = time.perf_counter() - t0
            n,t,c = one_pass(dl, a.max_batches)
            res[size, kind] = n/t,c/n*1e6,build
            print(f"{size:3d}px {kind:12s} loaders built in {build:5.1f} s; {n:7,d} images in {t:7.1f} s: {n/t:8,.0f} images/s, "
                  f"{c/n*1e6:6,.0f} us CPU/image (load {load()})", flush=True)
    nw = dl.fake_l.num_workers
    ratio = 'datablock' in a.paths and len(a.paths) > 1
    head = ['size'] + [f'{PATHS[k]}: images/s (CPU us/image; loaders built in s)' for k in a.paths] + (
           [f'{k} / datablock (images/s)' for k in a.paths if k != 'datablock'] if ratio else [])
    rows = ['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)]
    for size in a.sizes:
        r = [f'{size} px'] + [f'{res[size, k][0]:,.0f} ({res[size, k][1]:,.0f}; {res[size, k][2]:.1f} s)' for k in a.paths]
        if ratio: r += [f'{res[size, k][0]/res[size, "datablock"][0]:.1f}x' for k in a.paths if k != 'datablock']
        rows.append('| ' + ' | '.join(r) + ' |')
    print(f"\nImages/second over {'one full pass' if not a.max_batches else f'{a.max_batches} batches'} of the train set "
          f"({len(dl.dataset):,} images), bs {a.bs}, {nw} loader workers, augmentation {a.aug!r}, batch transforms on the CPU "
          f"with {torch.get_num_threads()} PyTorch thread(s):\n")
    print('\n'.join(rows))
    print(f"\ncommand: `{cmd}`\nmachine: {machine()}; load average at the end {load()} (1, 5, 15 min)")
    return res

if __name__ == '__main__': main()
