"""What a person waits for after training: a cold `tiny-fastai predict` of one image and the page's time to ready.

Each row runs the command in a new process (cold: a fresh interpreter, as a user types it) and records its wall time and
peak memory (the child's maximum resident set, from `getrusage`), and the seconds from `tiny-fastai app RUN` to the
page answering. Rows: this checkout, `--baseline` (another checkout, e.g. today's main, run the same way with its
package on PYTHONPATH) and `--python` (this checkout under another interpreter, e.g. an environment with PyTorch's
CPU-only build). The first run of each row is reported with the median of `--repeat` runs; the load average beside it.

    python bench/predict.py RUN IMAGE [--baseline path/to/main] [--python path/to/cpu-env/bin/python] [--repeat 3] [--page]
    python bench/predict.py --quick      # a test on a CPU: trains a 5-class run in seconds, one predict per row, no page
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import ROOT, load, machine, subset, QUICK_SUBSET

CLI = "import sys; from tiny_fastai.cli import main; sys.exit(main())"   # what the `tiny-fastai` console script runs
PROBE = ("import resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
         "print(r.returncode, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

def _env(src): return {**os.environ, 'PYTHONPATH': str(src), 'MPLBACKEND': 'Agg', 'GRADIO_ANALYTICS_ENABLED': 'False'}

def cold(python, src, args) -> tuple:
    "(exit code, wall seconds, peak MB) of `tiny-fastai ARGS` in a new process of `python` with the package of checkout `src`"
    o = subprocess.run([sys.executable, '-c', PROBE, python, '-c', CLI, *map(str, args)], capture_output=True, text=True, env=_env(src),
                       cwd=src)   # in the checkout: `python -c` imports the package of its working folder first
    code, s, kb = o.stdout.split()
    return int(code), float(s), int(kb)/1024

def page_ready(python, src, run, timeout=600) -> float:
    "Seconds from starting `tiny-fastai app RUN` to the page answering with status 200"
    t = time.time()
    with tempfile.TemporaryFile('w+') as log:
        p = subprocess.Popen([python, '-c', CLI, 'app', str(run), '--port', '0'], stdout=log, stderr=subprocess.STDOUT, env=_env(src), cwd=src)
        try:
            while time.time() - t < timeout and p.poll() is None:
                log.seek(0); m = re.search(r'http://127\.0\.0\.1:\d+', log.read())
                if m:
                    try:
                        if urllib.request.urlopen(m.group(0), timeout=30).status == 200: return time.time() - t
                    except OSError: pass
                time.sleep(0.1)
            log.seek(0); raise RuntimeError(f"the page did not start: {log.read()[-500:]}")
        finally: p.terminate(); p.wait(30)

def quick_run(tmp) -> tuple:
    "A run of the demo preset on 5 classes of the sample, 1 epoch per stage (seconds): (its folder, one val image)"
    from tiny_fastai.recipe import train_recipe
    data = subset(dest=tmp/'data', tmp=tmp, **QUICK_SUBSET)
    train_recipe('demo', out=tmp/'run', data=data, epochs=(1, 1), num_workers=0, tta=False)
    return tmp/'run', sorted((data/'val'/'images').iterdir())[0]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', nargs='?', help='a run folder (default: runs/demo)')
    p.add_argument('image', nargs='?', help='an image file (default: the first val image of the bundled sample)')
    p.add_argument('--baseline', help='another checkout to measure the same way (e.g. a worktree of main)')
    p.add_argument('--python', action='append', default=[], help='another interpreter to run this checkout with (repeatable)')
    p.add_argument('--repeat', type=int, default=3, help='runs per row (default 3)')
    p.add_argument('--page', action='store_true', help="also time the page (`tiny-fastai app`) to ready")
    p.add_argument('--quick', action='store_true', help='a test on a CPU: a 5-class run trained here, one run per row, no page')
    a = p.parse_args(argv)
    if a.quick: run, image = quick_run(Path(tempfile.mkdtemp(prefix='predict_bench_')))
    else:
        from tiny_fastai.data import sample_path   # (no fastai: only the sample's place)
        run = Path(a.run or 'runs/demo')
        image = Path(a.image) if a.image else sorted((sample_path()/'val'/'images').iterdir())[0]
    run, image, repeat = Path(run).absolute(), Path(image).absolute(), 1 if a.quick else a.repeat
    rows = [('this checkout', sys.executable, ROOT)] + [(f'this checkout, {py}', py, ROOT) for py in a.python] + \
           ([('baseline ' + str(a.baseline), sys.executable, Path(a.baseline).resolve())] if a.baseline else [])
    res = []
    for name, py, src in rows:
        l0 = load()
        runs = [cold(py, src, ['predict', run, image]) for _ in range(repeat)]
        if any(c != 0 for c, _, _ in runs): raise SystemExit(f"{name}: tiny-fastai predict failed (exit {runs[0][0]})")
        try: ready = [page_ready(py, src, run) for _ in range(repeat)] if a.page else None
        except RuntimeError as e: ready = None; print(f"{name}: no page ({e})", flush=True)   # e.g. an environment without gradio
        res.append(dict(name=name, first_s=runs[0][1], median_s=statistics.median(s for _, s, _ in runs),
                        mb=max(m for _, _, m in runs), ready_s=ready and ready[0], ready_med=ready and statistics.median(ready),
                        load=f'{l0} -> {load()}'))
        print(f"{name}: {res[-1]}", flush=True)
    print(f"\n{machine()}; `python bench/predict.py {' '.join(sys.argv[1:] if argv is None else map(str, argv))}`\n")
    print('| row | predict, first s | predict, median s | peak MB | page ready, first (median) s | load average before -> after |')
    print('|---|---|---|---|---|---|')
    for r in res:
        pg = f"{r['ready_s']:.1f} ({r['ready_med']:.1f})" if r['ready_s'] is not None else '-'
        print(f"| {r['name']} | {r['first_s']:.2f} | {r['median_s']:.2f} | {r['mb']:.0f} | {pg} | {r['load']} |")
    return res

if __name__ == '__main__': main()
