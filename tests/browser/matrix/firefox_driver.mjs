// Opens a URL in Debian's Firefox ESR through puppeteer-core over WebDriver BiDi (no geckodriver), waits for the
// page's window.matrixResult (a JSON string) and prints it. Used by tests/browser/test_browser_matrix.py:
//   node firefox_driver.mjs URL TIMEOUT_MS
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../../web_runtime/package.json', import.meta.url));
const { default: puppeteer } = await import(require.resolve('puppeteer-core'));
const [url, timeout = '600000'] = process.argv.slice(2);
const browser = await puppeteer.launch({ browser: 'firefox', executablePath: '/usr/bin/firefox-esr', headless: true,
  protocol: 'webDriverBiDi' });
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => typeof window.matrixResult === 'string', { timeout: Number(timeout), polling: 250 });
  process.stdout.write(await page.evaluate(() => window.matrixResult));
} finally {
  await browser.close();
}
