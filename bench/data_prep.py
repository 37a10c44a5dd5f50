"""The fixed cost of getting Tiny ImageNet into the uint8 array cache (issue 16): today's way (extract the archive's
110,000 files, decode every image to check it, decode every image again into the cache) against the streaming way
(`get_tiny_imagenet(archive, background=True)` + `tiny_dls(cache=True)`: the archive's bytes decoded straight into the
cache, the folder extracted in the background), and the start of a second run (`train_recipe` start to its first
training batch, in a fresh process, on the same data).

Usage: python bench/data_prep.py [ARCHIVE] [--quick] [--work DIR] [--workers N] [--json FILE]
ARCHIVE: the Tiny ImageNet .tar.gz/.zip (default: $TINY_IMAGENET). --quick: an archive of the bundled sample instead
(1,000 + 500 images, seconds). Everything is written under --work (default: a temporary folder, removed at the end).
Prints a markdown table with the command, the machine and the load average (on a shared machine times move with the
load: compare rows of one run only)."""
import argparse, hashlib, json, os, resource, shutil, subprocess, sys, tarfile, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import load, machine   # bench/common.py (and the checkout on the path)

warnings.filterwarnings('ignore')

_FIRST_BATCH = '''
import json, os, sys, time
t0 = time.time()
from fastai.callback.core import Callback
from tiny_fastai.recipe import train_recipe
t1 = time.time()
class Started(Exception): pass
class First(Callback):
    order = -100
    def before_batch(self):
        if self.training: raise Started('first batch')
try: train_recipe('demo', out=sys.argv[2], data=sys.argv[1], device='cpu', cbs=[First()], restart=True, num_workers=int(sys.argv[3]))
except Started: print(json.dumps(dict(import_s=t1-t0, first_batch_s=time.time()-t1)))
'''

def first_batch(arch, out, env, workers) -> dict:
    "Seconds from `train_recipe` start to its first training batch, in a fresh process (and its imports apart)"
    r = subprocess.run([sys.executable, '-c', _FIRST_BATCH, str(arch), str(out), str(workers)], capture_output=True, text=True, env=env)
    if r.returncode: raise RuntimeError(f"train_recipe failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def sha256(fname) -> str:
    "SHA-256 of the bytes of `fname` (the key of an archive's cache)"
    h = hashlib.sha256()
    with open(fname, 'rb') as f:
        while b := f.read(2**22): h.update(b)
    return h.hexdigest()

def hash_files(files) -> str:
    "BLAKE2b of the bytes of every file, in order (one thread: the page cache is warm, this is CPU and system calls)"
    h = hashlib.blake2b()
    for f in files:
        with open(f, 'rb') as g: h.update(g.read())
    return h.hexdigest()

def cpu_s():
    "CPU seconds used so far by this process and its finished children (decoding and extracting processes)"
    return sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for a in ('ru_utime', 'ru_stime'))

def timed(f, *args, **kwargs):
    "The result of `f`, and its (wall, CPU) seconds"
    t,c = time.perf_counter(),cpu_s(); r = f(*args, **kwargs)
    return r,(time.perf_counter()-t, cpu_s()-c)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='archive (default: $TINY_IMAGENET)')
    p.add_argument('--quick', action='store_true', help='an archive of the bundled sample (seconds)')
    p.add_argument('--work', help='folder for the extracted data and caches (default: a temporary one, removed at the end)')
    p.add_argument('--workers', type=int, default=None, help='decoding processes (default: all CPUs)')
    p.add_argument('--json', help='also write the results here')
    a = p.parse_args(argv)
    from tiny_fastai.archive import get_tiny_imagenet
    from tiny_fastai.data import scan, sample_path, wait_extracted
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.cache import archive_caches, build_cache
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='data_prep-'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if a.quick:
            arch = work/'sample.tar.gz'
            with tarfile.open(arch, 'w:gz') as t: t.add(sample_path(), 'tiny-imagenet-200')
        elif a.data is None: p.error('give the Tiny ImageNet archive (or set TINY_IMAGENET), or --quick')
        else: arch = Path(a.data)
        cmd = 'python ' + ' '.join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
        res = dict(command=cmd, machine=machine(), archive=str(arch), load_start=load(), steps={})
        st = res['steps']
        cpu = res['cpu_s'] = {}
        def say(k, v):
            v,c = v if isinstance(v, tuple) else (v, None)
            st[k] = round(v, 2)
            if c is not None: cpu[k] = round(c, 2)
            print(f"{k}: {v:.2f} s" + (f", {c:.2f} s CPU" if c is not None else '') + f" (load {load()})", flush=True)
        print(f"machine: {machine()}; load average at start {load()}", flush=True)
        # today: extract, decode every image to check it, decode every image into the cache
        path,t = timed(get_tiny_imagenet, arch, dest=work/'today'); say('today_extract', t)
        lay,t = timed(scan, path, check_images=True); say('today_check_images', t)
        def build(lay):   # what tiny_dls(cache=True) did after the check: both splits from the files
            idx = {w:i for i,w in enumerate(lay.wnids)}
            for split,rows in (('train', lay.train), ('valid', lay.valid)):
                build_cache(lay.path, split, [f for f,_ in rows], [idx[w] for _,w in rows], work/'today-cache', n_workers=a.workers, verbose=False)
        _,t = timed(build, lay); say('today_build_cache', t)
        for d in (st, cpu): d['today_total'] = round(d['today_extract'] + d['today_check_images'] + d['today_build_cache'], 2)
        n = len(lay.train) + len(lay.valid)
        _,t = timed(sha256, arch); say('archive_sha256', t)   # not `file_sha256`: it keeps what it hashed
        files = [f for f,_ in lay.train + lay.valid]
        _,t = timed(lambda: [os.stat(f) for f in files]); say('files_stat_key', t)   # what the key of a folder's cache reads
        _,t = timed(hash_files, files); say('files_bytes_hash', t)   # what a key from the files' bytes would cost at every load
        # the streaming way: the cache from the archive's bytes; alone, then with the folder extracted in the background
        _,t = timed(archive_caches, arch, work/'alone'/'tiny-imagenet-200', work/'alone-cache', n_workers=a.workers, verbose=False)
        say('stream_cache_alone', t)
        t0,c0 = time.perf_counter(),cpu_s()
        p2 = get_tiny_imagenet(arch, dest=work/'stream', background=True)
        tiny_dls(p2, cache=True, check_images=True, decode_workers=a.workers, num_workers=0, device='cpu', verbose=False)
        say('stream_loaders_ready', time.perf_counter()-t0)
        wait_extracted(p2); say('stream_folder_extracted', (time.perf_counter()-t0, cpu_s()-c0))
        _,t = timed(tiny_dls, p2, cache=True, check_images=True, num_workers=0, device='cpu', verbose=False); say('stream_loaders_again', t)
        # a second run of the recipe on the same data, in fresh processes (the first builds what the second finds)
        env = dict(os.environ, FASTAI_HOME=str(work/'fastai'))
        for k in ('recipe_first_run', 'recipe_second_run'):
            r = first_batch(arch, work/'run', env, 0 if a.quick else 1)
            say(k + '_first_batch', r['first_batch_s']); st[k + '_import_s'] = round(r['import_s'], 2)
        res['load_end'] = load()
        rows = [('extract the archive (today)', 'today_extract'), ('decode every image to check it (today)', 'today_check_images'),
                ('decode every image into the cache (today)', 'today_build_cache'), ('**today: all three**', 'today_total'),
                ('SHA-256 of the archive (the key of its cache)', 'archive_sha256'),
                ('stat of every file (the key of a folder\'s cache: size, times, inode)', 'files_stat_key'),
                ('BLAKE2b of every file\'s bytes (a content key for a folder, not used)', 'files_bytes_hash'),
                ('streaming: archive -> cache alone (no extraction beside it)', 'stream_cache_alone'),
                ('**streaming: archive -> cache, loaders ready** (the folder extracting beside it)', 'stream_loaders_ready'),
                ('streaming: the folder extracted in the background (done at)', 'stream_folder_extracted'),
                ('streaming: loaders again (cache up to date)', 'stream_loaders_again'),
                ('train_recipe start -> first batch, first run', 'recipe_first_run_first_batch'),
                ('**train_recipe start -> first batch, second run**', 'recipe_second_run_first_batch')]
        md = [f"Getting {n:,} images of {arch.name} into the array cache ({a.workers or os.cpu_count()} decoding processes):\n",
              '| step | seconds | CPU seconds (all processes) |', '|---|---|---|'] + [
              f"| {s} | {st[k]:.2f} | {cpu[k]:.2f} |" if k in cpu else f"| {s} | {st[k]:.2f} | |" for s,k in rows]
        md += ['', f"command: `{cmd}`", f"machine: {machine()}; load average (1/5/15 min) {res['load_start']} at start, {res['load_end']} at the end"]
        res['markdown'] = '\n'.join(md)
        print('\n' + res['markdown'])
        if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')
        return res
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)

if __name__ == '__main__': main()
