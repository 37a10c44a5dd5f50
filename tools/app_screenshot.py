"""Take the README's picture of the web page: `python tools/app_screenshot.py RUN IMAGE OUT.png`.

Serves RUN with `tiny_fastai.app.serve` (no blocking), opens it in headless Chromium (selenium + chromedriver, as
tests/test_app.py does), uploads IMAGE, waits for the label with its bars and the map, and saves the top of the page as a small PNG (256 colours)."""
import shutil, sys, tempfile, time
from pathlib import Path
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from tiny_fastai.app import serve

def main(run, image, out, width=1100, height=900):
    page, port = serve(run, block=False)
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars',
              f'--window-size={width},{height}', f'--user-data-dir={tempfile.mkdtemp()}'):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=o)
    try:
        d.get(f'http://127.0.0.1:{port}')
        t = time.time()
        while not d.find_elements(By.CSS_SELECTOR, '#image input[type=file]'):
            if time.time() - t > 60: raise TimeoutError('no upload field')
            time.sleep(0.3)
        d.find_element(By.CSS_SELECTOR, '#image input[type=file]').send_keys(str(Path(image).absolute()))
        while not (d.find_elements(By.CSS_SELECTOR, '#top5 meter') and d.find_elements(By.CSS_SELECTOR, '#cam img')):
            if time.time() - t > 120: raise TimeoutError('no result')
            time.sleep(0.3)
        time.sleep(1)
        tmp = Path(tempfile.mkdtemp())/'page.png'
        d.save_screenshot(str(tmp))
    finally: d.quit(); page.close(); shutil.rmtree(page.root, ignore_errors=True)
    Image.open(tmp).convert('RGB').quantize(256).save(out, optimize=True)
    print(f"wrote {out} ({Path(out).stat().st_size//1024} KB)")

if __name__ == '__main__': main(*sys.argv[1:4])
