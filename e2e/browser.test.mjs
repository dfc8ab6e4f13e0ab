// The browser itself: Chromium starts with the flags the dashboard test uses, renders a page
// served from 127.0.0.1, runs its script and reports its errors. When this fails, the
// machine's browser is at fault, not the dashboard.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import { assertNoErrors, openBrowser, step } from './harness.mjs';

const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>probe</title></head>
<body><h1>Probe</h1><output id="sum"></output>
<script>document.getElementById('sum').textContent = String(20 + 22);</script>
</body></html>`;

let server;
let base;

before(async () => {
  server = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(PAGE);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  await new Promise((resolve) => server?.close(resolve) ?? resolve());
});

test('Chromium starts headless and runs a local page', async () => {
  const started = Date.now();
  const browser = await openBrowser();
  try {
    step(`Chromium ${browser.context.browser()?.version() ?? ''} started in ${Date.now() - started} ms`);
    const { page, errors } = browser;
    await page.goto(base + '/');
    assert.equal(await page.locator('h1').textContent(), 'Probe');
    assert.equal(await page.locator('#sum').textContent(), '42');
    await page.evaluate(() => console.error('expected'));
    assert.deepEqual(errors.length, 1, 'console errors are collected');
    errors.length = 0;
    assertNoErrors(errors);
  } finally {
    await browser.close();
  }
});
