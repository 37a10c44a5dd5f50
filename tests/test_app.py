"""tiny_fastai.app and the commands that use it: `predict --cam DIR` writes one overlay per image; `tiny-fastai app RUN`
serves a page that, driven in headless Chromium, shows for an uploaded val image the same top 5 as `predict --json`
(to the third decimal of the probability), the map of the top class and the run's card, and a message (not a traceback)
for an unreadable file; folders without the model files and a missing gradio give one line and exit code 2."""
import json, os, re, shutil, subprocess, sys, time, pytest
from pathlib import Path
from PIL import Image
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.recipe import train_recipe
from tiny_fastai.infer import load_model
from tiny_fastai.app import image_maps, write_cams, free_port, check_run, AppError, model_field
from test_cli import run_main

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent/'tiny-fastai')

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A finished quick run on a 5-class slice of the bundled sample: (its folder, its data)"
    d = tmp_path_factory.mktemp('app')
    data = make_subset(sample_path(), d/'tiny', n_classes=5, n_train=20, n_val=10)
    train_recipe('demo', out=d/'run', data=data, sizes=[16, 32], epochs=[1, 1], lrs=[2e-3], bs=16, tta=False, num_workers=0)
    return d/'run', data

@pytest.fixture(scope='module')
def images(run):
    return sorted((run[1]/'val'/'images').iterdir())[:3]

def test_image_maps_agree_with_predict(run, images):
    "The top 5 of image_maps are predict's, to the float; the map is at the crop's size"
    out, _ = run
    code, o, err = run_main('predict', out, *images, '--json')
    assert code == 0, err
    want = json.loads(o)
    got = image_maps(load_model(out), images)
    for w, g in zip(want, got):
        assert [c for c, _ in g['top']] == [c for c, _ in w['top']]
        assert [p for _, p in g['top']] == pytest.approx([p for _, p in w['top']], abs=1e-6)
        assert tuple(g['crop'].shape) == (3, 64, 64) and tuple(g['cam'].shape) == (64, 64) and g['map_size'] == (4, 4)

def test_predict_cam_writes_overlays(run, images, tmp_path):
    "`predict --cam DIR` writes DIR/<name>.cam.png per image (two images of one name get two files); a file as DIR is one line"
    out, _ = run
    twin = tmp_path/'other'/images[0].name
    twin.parent.mkdir(); shutil.copy(images[0], twin)
    code, o, err = run_main('predict', out, *images, twin, '--cam', tmp_path/'cams')
    assert code == 0, err
    assert f"wrote 4 class-map picture(s) to {tmp_path/'cams'}" in o and 'flat' not in o, o   # the demo's maps are 4x4 (main: 1x1, flat)
    fs = sorted(p.name for p in (tmp_path/'cams').iterdir())
    assert fs == sorted([f.stem + '.cam.png' for f in images] + [images[0].stem + '-2.cam.png'])
    im = Image.open(tmp_path/'cams'/fs[0])
    assert im.width == 256 and im.height > 256 and im.mode == 'RGB'
    code, o, err = run_main('predict', out, images[0], '--json', '--cam', tmp_path/'c2')
    assert code == 0 and json.loads(o) and 'wrote' in err and str(tmp_path/'c2') in err   # stdout stays JSON
    (tmp_path/'afile').write_text('x')
    code, _, err = run_main('predict', out, images[0], '--cam', tmp_path/'afile')
    assert code == 2 and f"--cam {tmp_path/'afile'} is a file, not a folder" in err and len(err.strip().splitlines()) == 1

def test_predict_cam_never_writes_through_links(run, images, tmp_path):
    "A link already in DIR is replaced by the picture, its target untouched; a DIR that is a link is refused in one line (as evaluate --out)"
    out, _ = run
    victim = tmp_path/'victim.txt'; victim.write_text('precious')
    cams = tmp_path/'cams'; cams.mkdir()
    (cams/f"{images[0].stem}.cam.png").symlink_to(victim)
    code, o, err = run_main('predict', out, images[0], '--cam', cams)
    assert code == 0, err
    assert victim.read_text() == 'precious'                                        # main overwrote it with a PNG
    f = cams/f"{images[0].stem}.cam.png"
    assert not f.is_symlink() and Image.open(f).width == 256 and not list(cams.glob('.*.tmp'))
    (tmp_path/'linked').symlink_to(cams, target_is_directory=True)
    code, _, err = run_main('predict', out, images[0], '--cam', tmp_path/'linked')
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'is a symbolic link' in err, err

def test_predict_argument_mistakes(run, images, tmp_path):
    "`--cam ''` is refused (it was ignored); `predict IMAGE RUN` says the model comes first; each in one line, exit code 2"
    out, _ = run
    code, _, err = run_main('predict', out, images[0], '--cam', '')
    assert code == 2 and '--cam is empty' in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_main('predict', images[0], out)
    assert code == 2 and 'the model comes first' in err and len(err.strip().splitlines()) == 1, err

def test_app_port_out_of_range(run):
    "`--port 99999` is one line naming --port (it was an OverflowError), before gradio is imported"
    code, _, err = run_main('app', run[0], '--port', '99999')
    assert code == 2 and '--port must be at most 65535' in err and 'Overflow' not in err, err

def test_page_text_is_escaped(run, tmp_path):
    "Class names and results.json fields are shown as text (no tag, no link); a malformed results.json is named on the page, not fatal"
    from tiny_fastai.app import md_text, map_note, run_card, val_examples, _title
    evil = '<img src="http://example.invalid/x.png">'
    for s in (md_text(evil), map_note([(evil, 0.5)], (4, 4), 32), map_note([('![x](http://example.invalid/y)', .5)], (4, 4), 32)):
        assert '<img' not in s and '](' not in s.replace('\\](', '')
    d = tmp_path/'r'; shutil.copytree(run[0], d)
    for bad in ('{"top1": ', '[1, 2]', '{"params": "many", "top1": "x"}'):
        (d/'results.json').write_text(bad)
        card = run_card(d)
        assert 'results.json' in card and 'served without its card' in card, card
        m = load_model(d)
        assert _title(d, m).startswith('# r') and val_examples(m, d, 2) is not None
    (d/'results.json').write_text(json.dumps(dict(preset=evil, arch='tiny', device=evil)))
    assert '<img' not in run_card(d) and '<img' not in _title(d, load_model(d))

def test_app_refuses_a_folder_without_model(run, tmp_path):
    "A folder without model.safetensors + model.json (even with a model.pkl) is refused in one line naming it, exit code 2"
    shutil.copy(run[0]/'model.pkl', tmp_path/'model.pkl')
    code, _, err = run_main('app', tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path} has no model.safetensors and no model.json" in err and 'never loads a pickle' in err
    code, _, err = run_main('app', tmp_path/'nope')
    assert code == 2 and 'is not a folder' in err

def test_app_without_gradio_names_the_extra(run):
    "Without gradio: `import tiny_fastai.app` works and `tiny-fastai app` names the extra, in one line, exit code 2"
    code = ("import sys; sys.modules['gradio'] = None\n"   # as if it were not installed
            "import tiny_fastai.app\n"
            "from tiny_fastai.cli import main\n"
            f"sys.exit(main(['app', {str(run[0])!r}]))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1:] == [
        'tiny-fastai app: error: the web page needs gradio, which is not installed: pip install "tiny_fastai[app]"'], r.stderr
    r = subprocess.run([sys.executable, '-c', "import tiny_fastai.app, sys; print('gradio' in sys.modules)"],
                       capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.stdout.strip() == 'False', r.stderr   # gradio is imported only when the page is built

def test_model_field():
    "A field of model.json, whether the model holds it as a dict or as an object with attributes; None where it is absent"
    from types import SimpleNamespace as NS
    assert model_field(NS(info={'arch': 'tiny'}), 'arch') == 'tiny' and model_field(NS(info={}), 'data') is None
    assert model_field(NS(info=NS(arch='dense', data=None)), 'arch') == 'dense' and model_field(NS(info=NS()), 'data') is None

def test_free_port():
    "The port asked for when it is free, another when something listens there"
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(); taken = s.getsockname()[1]
        p = free_port(taken)
        assert p != taken and p > 0
    assert free_port(p) == p

def _browser():
    "A headless Chromium driven by selenium, or skip with the reason"
    pytest.importorskip('gradio', reason='gradio is not installed: pip install "tiny_fastai[app]"')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
    from selenium.webdriver.chrome.service import Service
    drv, chrome = shutil.which('chromedriver'), shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not (drv and chrome): pytest.skip('no chromium + chromedriver on this machine (apt-get install chromium chromium-driver)')
    return webdriver, Service(drv), chrome

def _pages():
    import tempfile
    return set(Path(tempfile.gettempdir()).glob('tiny-fastai-page-*'))

@pytest.fixture(scope='module')
def app(run, tmp_path_factory):
    "`tiny-fastai app RUN` in a subprocess, on a port that is already taken (it picks another), with files in RUN it must not serve: (url, log, port)"
    import socket
    (run[0]/'secret.txt').write_text('secret'); (run[0]/'.ssh').mkdir(exist_ok=True); (run[0]/'.ssh'/'id_rsa').write_text('key')
    blocker = socket.socket(); blocker.bind(('127.0.0.1', 0)); blocker.listen()
    port = blocker.getsockname()[1]
    log = tmp_path_factory.mktemp('applog')/'out.txt'
    f = open(log, 'w')
    before = _pages()
    p = subprocess.Popen([BIN, 'app', str(run[0]), '--port', str(port)], stdout=f, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False'})
    try:
        t = time.time()
        while not re.search(r'http://127\.0\.0\.1:\d+', log.read_text()):
            if p.poll() is not None or time.time() - t > 240: pytest.fail(f"the app did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        url = re.search(r'http://127\.0\.0\.1:\d+', log.read_text()).group(0)
        yield url, log.read_text(), port
    finally:
        p.terminate(); p.wait(30); f.close(); blocker.close()
    assert p.returncode == 143, log.read_text()[-2000:]   # SIGTERM: stopped as the convention says
    assert not (_pages() - before), 'the page left its folder (uploads, copies) behind'

def test_app_serves_only_what_it_shows(run, app):
    "Files of the run folder that the page does not show (a key, a secret, the pickle, results.json) are not served; its pictures are"
    import urllib.request, urllib.error
    url, log, _ = app
    assert 'reachable from the network' not in log
    def status(path):
        try: return urllib.request.urlopen(f"{url}/gradio_api/file={path}", timeout=30).status
        except urllib.error.HTTPError as e: return e.code
    for f in ('secret.txt', '.ssh/id_rsa', 'model.pkl', 'results.json', 'model.safetensors', 'history.png'):
        assert status(run[0]/f) in (403, 404), f       # main served each with 200

def test_app_refuses_large_uploads(app):
    "An upload above the page's limit (20 MB) is refused with 413 (main took any size and kept it)"
    import urllib.request, urllib.error, uuid
    url, b = app[0], uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n').encode() + \
           bytes(21 * 2**20) + f'\r\n--{b}--\r\n'.encode()
    req = urllib.request.Request(f"{url}/gradio_api/upload", data=body, headers={'Content-Type': f'multipart/form-data; boundary={b}'})
    try: status = urllib.request.urlopen(req, timeout=120).status
    except urllib.error.HTTPError as e: status = e.code
    assert status == 413

def test_host_line():
    "Another --host than this machine's says in one line that the page is reachable from the network"
    from tiny_fastai.app import host_note
    assert host_note('127.0.0.1') is None and host_note('localhost') is None
    assert 'reachable from the network' in host_note('0.0.0.0') and '\n' not in host_note('0.0.0.0')

@pytest.fixture(scope='module')
def driver(run, tmp_path_factory):
    webdriver, service, chrome = _browser()
    o = webdriver.ChromeOptions()
    o.binary_location = chrome
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--window-size=1280,1100',
              f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=service, options=o)
    d.set_page_load_timeout(120)
    yield d
    d.quit()

def _wait(cond, timeout=120, what=''):
    t = time.time()
    while time.time() - t < timeout:
        res = cond()
        if res: return res
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")

def _label(driver):
    "The page's label: (its heading, [(class, probability) of each bar])"
    from selenium.webdriver.common.by import By
    head = driver.find_elements(By.CSS_SELECTOR, '#top5 .output-class')
    bars = driver.find_elements(By.CSS_SELECTOR, '#top5 meter')
    if not (head and bars): return None
    return head[0].text, [(b.get_attribute('aria-label'), float(b.get_attribute('value'))) for b in bars]

def _natural(driver, img):
    "(natural width, natural height, shown width, shown height) of an <img>"
    return driver.execute_script("const i = arguments[0]; const r = i.getBoundingClientRect(); return [i.naturalWidth, i.naturalHeight, r.width, r.height];", img)

def test_page_in_a_browser(run, images, app, driver, tmp_path):
    "Upload a val image: the page shows it, a label with a bar per class (predict --json's top 5), the map, the val thumbnails, the card and uncropped pictures; a bad file gets a message"
    from selenium.webdriver.common.by import By
    url, log, taken = app
    assert f"(port {taken} is taken)" in log and 'Traceback' not in log
    driver.get(url)
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, '#image input[type=file]'), what='the upload field')
    title = driver.find_element(By.ID, 'title').text
    res = json.loads((run[0]/'results.json').read_text())
    assert all(s in title for s in ('demo preset', 'arch tiny', '5 classes', f"top-1 {res['top1']:.1%}")), title
    card = driver.find_element(By.ID, 'card').text
    for s in ('demo', 'tiny', f"{res['params']:,}", f"{res['top1']:.3f}", f"{res['top5']:.3f}", res['device']): assert s in card, s
    thumbs = _wait(lambda: [i for i in driver.find_elements(By.TAG_NAME, 'img') if 'example' in (i.get_attribute('src') or '')
                            and _natural(driver, i)[0] > 0], what='the thumbnails')
    assert len(thumbs) == min(8, len(list((run[1]/'val'/'images').iterdir())))   # the val examples as pictures, not names
    pics = _wait(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, 'img[src*="history.png"], img[src*="confusion.png"]')
                          if _natural(driver, i)[0] > 0] or None, what="the run's pictures")
    assert len(pics) == 2
    for i in pics:                                           # shown whole: the shape of the picture, not a crop of it
        nw, nh, w, h = _natural(driver, i)
        assert abs(w/h - nw/nh) < 0.03 * nw/nh, (nw, nh, w, h)
    driver.find_element(By.CSS_SELECTOR, '#image input[type=file]').send_keys(str(images[1]))
    head, bars = _wait(lambda: _label(driver), what='the label')
    code, o, err = run_main('predict', run[0], images[1], '--json')
    want = json.loads(o)[0]['top']
    assert head == want[0][0] and [c for c, _ in bars] == [c for c, _ in want]
    assert all(abs(p - q) < 1e-5 for (_, p), (_, q) in zip(bars, want)), (bars, want)
    prev = _wait(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, '#image img') if _natural(driver, i)[0] > 0], what='the preview')
    assert _natural(driver, prev[0])[:2] == list(Image.open(images[1]).size)   # the uploaded image itself
    assert _wait(lambda: driver.find_elements(By.CSS_SELECTOR, '#cam img'), what='the map')
    driver.save_screenshot(str(tmp_path/'page.png'))
    if os.environ.get('TINY_FASTAI_SCREENSHOT'): shutil.copy(tmp_path/'page.png', os.environ['TINY_FASTAI_SCREENSHOT'])
    bad = tmp_path/'notes.jpg'; bad.write_text('not an image')
    driver.get(url)   # a fresh page: the upload field again
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, '#image input[type=file]'), what='the upload field')
    driver.find_element(By.CSS_SELECTOR, '#image input[type=file]').send_keys(str(bad))
    msg = _wait(lambda: driver.find_element(By.ID, 'message').text or driver.find_elements(By.CSS_SELECTOR, '.toast-body'), what='the message')
    text = msg if isinstance(msg, str) else msg[0].text
    assert 'Traceback' not in text and ('notes.jpg' in text or 'image' in text.lower()), text

def test_flat_maps_are_said_not_counted(run, images, tmp_path):
    "Where the maps are 1x1 (the same model fed 8 px images: model.json's size), predict --cam says they are flat instead of counting class-map pictures"
    d = tmp_path/'run'; shutil.copytree(run[0], d)
    info = json.loads((d/'model.json').read_text()); info['size'] = 8
    (d/'model.json').write_text(json.dumps(info))   # (the sha256 covers the weights, which are the same)
    code, o, err = run_main('predict', d, *images[:2], '--cam', tmp_path/'cams')
    assert code == 0, err
    assert '2 map(s) flat' in o and 'wrote 2 class-map' not in o and len((list((tmp_path/'cams').iterdir()))) == 2, o
