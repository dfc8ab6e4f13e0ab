// The dashboard (GET / and GET /dashboard) in headless Chromium, against a real order-server:
// live counts and rows, an order opened and cancelled from the page, the filters, the page's
// weight and origins, the token prompt, orders processed in steps (their timeline, and a cancel
// that compensates them), and no script errors anywhere.
//
// Run: npm ci --prefix e2e && npm test --prefix e2e (after cargo build -p order-server).
// Screenshots: target/dashboard.png (laptop), target/dashboard-phone.png (phone) and
// target/dashboard-steps.png (the dialog of an order in steps).

import assert from 'node:assert/strict';
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  REPO,
  SHOTS,
  api,
  assertNoErrors,
  eventually,
  openBrowser,
  parseCount,
  startServer,
  step,
} from './harness.mjs';

const LAPTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const MAX_PAGE_BYTES = 100 * 1024;
// Starting (30 s at most) or stopping a server and a browser.
const HOOK = { timeout: 45_000 };

/** The trimmed text of the first element `locator` finds, or null when there is none yet. */
async function textOf(locator) {
  try {
    const text = await locator.first().textContent({ timeout: 500 });
    return text?.trim() ?? null;
  } catch {
    return null;
  }
}

/** The number a count element shows, or NaN. */
async function countOf(page, testId) {
  return parseCount(await textOf(page.getByTestId(testId)));
}

/** The order rows of the table, as `{ id, status, hidden }`, in page order. */
async function rows(table) {
  return table.locator('tr[data-order-id]').evaluateAll((trs) =>
    trs.map((tr) => ({
      id: Number(tr.getAttribute('data-order-id')),
      status: tr.querySelector('[data-col="status"]')?.textContent.trim() ?? '',
      hidden: tr.offsetParent === null,
    })),
  );
}

/** The status the row of order `id` shows, or null when it has no row. */
async function rowStatus(table, id) {
  return textOf(table.locator(`tr[data-order-id="${id}"] [data-col="status"]`));
}

/** The step the row of order `id` shows (`charge · RUNNING`), or null when it has no row. */
async function rowStep(table, id) {
  return textOf(table.locator(`tr[data-order-id="${id}"] [data-col="step"]`));
}

/**
 * The steps the order dialog lists, as `{ name, status, times, error, visible }`, in order: read
 * from the list in one go (items found first and read after could be read once changed).
 */
async function detailSteps(detail) {
  return detail.getByTestId('detail-steps').evaluate((list) =>
    [...list.children].map((item) => ({
      name: item.querySelector('.step-name')?.textContent.trim() ?? '',
      status: item.querySelector('.badge')?.textContent.trim() ?? '',
      times: item.querySelector('.step-times')?.textContent.trim() ?? '',
      error: item.querySelector('.step-error')?.textContent.trim() ?? '',
      visible: item.offsetParent !== null,
    })),
  );
}

/** `reserve SUCCEEDED, charge RUNNING`: the dialog's steps in a line. */
const stepLine = (steps) => steps.map((s) => `${s.name} ${s.status}`).join(', ');

/**
 * Runs `body`; when it fails, prints the server's last log lines and saves a screenshot of the
 * page, so a failure can be read without running it again.
 */
async function reportingFailure(name, server, browser, body) {
  try {
    await body();
  } catch (err) {
    console.log(`--- ${name} failed; order-server's last log lines ---\n${server?.logs() ?? '(no server)'}`);
    if (browser) {
      const shot = path.join(SHOTS, `dashboard-failure-${name}.png`);
      await browser.page
        .screenshot({ path: shot, fullPage: true, timeout: 5_000 })
        .then(() => console.log(`screenshot of the page: ${shot}`))
        .catch(() => {});
      if (browser.errors.length > 0) console.log(`page errors:\n${browser.errors.join('\n')}`);
    }
    throw err;
  }
}

before(async () => {
  // A failure screenshot left by an earlier run would mislead.
  await mkdir(SHOTS, { recursive: true });
  for (const name of await readdir(SHOTS)) {
    if (/^dashboard-failure-.*\.png$/.test(name)) await rm(path.join(SHOTS, name), { force: true });
  }
});

/**
 * Starts an order-server with `env` and a browser before the suite's tests and stops both after
 * them; the returned object holds them (`server`, `browser`) once started.
 */
function serverAndBrowser(env) {
  const running = {};
  before(async () => {
    running.server = await startServer(env);
    step(`order-server listening on ${running.server.base}${env.API_TOKEN ? ', with API_TOKEN' : ''}`);
    running.browser = await openBrowser({ viewport: LAPTOP });
  }, HOOK);
  after(async () => {
    try {
      await running.browser?.close();
    } finally {
      await running.server?.stop();
    }
  }, HOOK);
  return running;
}

describe('dashboard, live', () => {
  // One worker, 4 s an order: the third of three waits about 8 s, time to cancel it even
  // on a loaded machine.
  const running = serverAndBrowser({ WORKERS: '1', PROCESSING_DELAY_MS: '4000' });

  test('shows orders as they change, opens, cancels and filters them', { timeout: 60_000 }, async () => {
    const { server, browser } = running;
    await reportingFailure('live', server, browser, async () => {
      const { page, errors } = browser;
      const origin = new URL(server.base).origin;

      // Every request the page makes, and the bytes of its document, scripts and styles.
      const requests = [];
      const weighed = [];
      page.on('request', (request) => requests.push(request.url()));
      page.on('response', (response) => {
        const type = response.request().resourceType();
        if (['document', 'script', 'stylesheet'].includes(type) && response.url().startsWith(origin)) {
          weighed.push(
            response.body().then(
              (body) => ({ url: response.url(), type, bytes: body.length }),
              () => ({ url: response.url(), type, bytes: 0 }),
            ),
          );
        }
      });

      // Layout shifts, as the browser scores them (Cumulative Layout Shift), from the start.
      await page.addInitScript(() => {
        window.layoutShifts = [];
        new PerformanceObserver((list) => {
          for (const entry of list.getEntries()) {
            if (entry.hadRecentInput) continue;
            const sources = (entry.sources ?? []).map((source) => {
              const node = source.node;
              if (!node || !node.nodeName) return '?';
              return node.nodeName.toLowerCase() + (node.id ? `#${node.id}` : '') + (node.dataset?.testid ? `[${node.dataset.testid}]` : '');
            });
            window.layoutShifts.push({ value: entry.value, sources });
          }
        }).observe({ type: 'layout-shift', buffered: true });
      });

      step('open /dashboard at 1280x800');
      const loaded = await page.goto(`${server.base}/dashboard`);
      assert.equal(loaded?.status(), 200, 'GET /dashboard answers 200');
      await page.getByRole('heading', { level: 1, name: 'Orders' }).waitFor();
      await eventually('the live indicator to say Live', async () =>
        (await textOf(page.getByTestId('live'))) === 'Live',
      );
      await eventually('count-total to show 0', async () => (await countOf(page, 'count-total')) === 0);
      const table = page.getByRole('table', { name: 'Latest orders' });
      await table.waitFor();

      step('create 3 orders through the API');
      const users = ['ann', 'bob', 'cy'];
      for (const [index, userId] of users.entries()) {
        const created = await api(server, 'POST', '/orders', {
          body: { userId, itemIds: ['book'], totalAmount: 12.5 },
          expect: 201,
        });
        assert.equal(created.body.order.id, index + 1);
      }

      step('the 3 rows appear without a reload');
      await eventually(
        'rows for orders 1, 2 and 3',
        async () => {
          const ids = (await rows(table)).map((row) => row.id).sort();
          return ids.join(',') === '1,2,3';
        },
        { timeout: 5_000 },
      );

      await eventually('the queue to hold the orders', async () => (await countOf(page, 'queue-depth')) >= 2);
      assert.notEqual(await textOf(page.getByTestId('oldest-pending')), 'none', 'an order is pending');

      step('open order 3 while it is PENDING and cancel it');
      await table.locator('tr[data-order-id="3"] [data-col="status"]').click();
      const detail = page.getByTestId('order-detail');
      await detail.waitFor({ state: 'visible' });
      assert.equal(await textOf(detail.getByTestId('detail-status')), 'PENDING');
      assert.equal(await rowStep(table, 3), '—', 'an order without steps shows none in the table');
      assert.equal(await detail.getByTestId('detail-steps').isVisible(), false, 'no steps timeline without steps');
      assert.equal(await detail.getByTestId('detail-cancel-requested').isVisible(), false);
      await detail.getByRole('button', { name: 'Cancel order' }).click();
      await eventually('the dialog to show CANCELLED', async () =>
        (await textOf(detail.getByTestId('detail-status'))) === 'CANCELLED',
      );
      // The stream may show CANCELLED before the POST's answer says so in the dialog.
      await eventually('the dialog to say Cancelled.', async () =>
        (await textOf(detail.getByRole('status'))) === 'Cancelled.',
      );
      await eventually('the Cancel order button to go', async () =>
        !(await detail.getByRole('button', { name: 'Cancel order' }).isVisible()),
      );
      const third = await api(server, 'GET', '/orders/3', { expect: 200 });
      assert.equal(third.body.order.status, 'CANCELLED', 'the API agrees that order 3 is CANCELLED');

      step('close the dialog; the row says CANCELLED');
      await detail.getByRole('button', { name: 'Close' }).click();
      await detail.waitFor({ state: 'hidden' });
      await eventually('row 3 to show CANCELLED', async () => (await rowStatus(table, 3)) === 'CANCELLED');

      step('orders 1 and 2 reach COMPLETED (up to 20 s)');
      await eventually(
        'rows 1 and 2 to show COMPLETED',
        async () => (await rowStatus(table, 1)) === 'COMPLETED' && (await rowStatus(table, 2)) === 'COMPLETED',
        { timeout: 20_000, every: 250 },
      );
      await eventually('count-COMPLETED to reach 2', async () => (await countOf(page, 'count-COMPLETED')) === 2, {
        timeout: 5_000,
      });
      const counts = {};
      for (const status of ['PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED', 'total']) {
        counts[status] = await countOf(page, `count-${status}`);
      }
      assert.deepEqual(counts, { PENDING: 0, PROCESSING: 0, COMPLETED: 2, FAILED: 0, CANCELLED: 1, total: 3 });
      assert.equal(await countOf(page, 'queue-depth'), 0, 'the queue is empty');

      step('filter by status COMPLETED');
      await page.getByRole('combobox', { name: 'Status' }).selectOption('COMPLETED');
      await eventually('only COMPLETED rows', async () => {
        const shown = (await rows(table)).filter((row) => !row.hidden);
        return (
          shown.length === 2 &&
          shown.every((row) => row.status === 'COMPLETED') &&
          shown.map((row) => row.id).sort().join(',') === '1,2'
        );
      });
      await page.getByRole('combobox', { name: 'Status' }).selectOption('');

      step('filter by user bob');
      await page.getByRole('searchbox', { name: 'User' }).fill('bob');
      await eventually('only the row of bob', async () => {
        const shown = (await rows(table)).filter((row) => !row.hidden);
        return shown.length === 1 && shown[0].id === 2;
      });
      await page.getByRole('searchbox', { name: 'User' }).fill('');
      await eventually('all 3 rows again', async () => (await rows(table)).filter((row) => !row.hidden).length === 3);

      step('layout shift while counts, charts and rows updated');
      const shifts = await page.evaluate(() => window.layoutShifts);
      const layoutShift = shifts.reduce((sum, entry) => sum + entry.value, 0);
      step(`  cumulative layout shift ${layoutShift.toFixed(4)} over ${shifts.length} shift(s)${shifts.length ? `: ${JSON.stringify(shifts)}` : ''}`);
      // 0.1 is the threshold browsers' tooling calls good; numbers that change width, a chart
      // that appears or a table that pushes the page would each pass it.
      assert.ok(layoutShift < 0.1, `cumulative layout shift ${layoutShift}: ${JSON.stringify(shifts)}`);

      step('with the pointer on a row, a new order waits; it shows once the pointer leaves');
      await table.locator('tr[data-order-id="2"] [data-col="amount"]').hover();
      await api(server, 'POST', '/orders', {
        body: { userId: 'dee', itemIds: ['lamp'], totalAmount: 30 },
        expect: 201,
      });
      const note = page.locator('#table-note');
      await eventually('the note to say an order is waiting', async () => /1 more recent order/.test((await textOf(note)) ?? ''));
      assert.equal(await rowStatus(table, 4), null, 'no row for order 4 while the pointer is on the table');
      assert.equal((await rows(table))[1].id, 2, 'the row under the pointer has not moved');
      await page.mouse.move(5, 5);
      await eventually('the row of order 4 once the pointer left', async () => (await rowStatus(table, 4)) !== null, {
        timeout: 5_000,
      });
      assert.equal((await rows(table))[0].id, 4, 'the new order is on top');

      step('the charts have drawn the completions; screenshots');
      for (const chart of ['chart-throughput', 'chart-processing']) {
        const svg = page.getByTestId(chart);
        await svg.waitFor({ state: 'visible' });
        assert.equal(await svg.getAttribute('role'), 'img');
        await eventually(`${chart} to draw a line`, () =>
          svg.evaluate((element) => [...element.querySelectorAll('path')].some((p) => /\d/.test(p.getAttribute('d') ?? '') && !p.classList.contains('grid'))),
        );
      }
      await page.evaluate(() => document.activeElement?.blur());
      const laptopShot = path.join(SHOTS, 'dashboard.png');
      await page.screenshot({ path: laptopShot, fullPage: true });
      await page.setViewportSize(PHONE);
      await page.waitForTimeout(300); // one layout after the resize
      const phoneWidth = await page.evaluate(() => document.documentElement.scrollWidth);
      const phoneShot = path.join(SHOTS, 'dashboard-phone.png');
      await page.screenshot({ path: phoneShot, fullPage: true });
      step(`saved ${path.relative(REPO, laptopShot)} and ${path.relative(REPO, phoneShot)}`);
      assert.ok(phoneWidth <= PHONE.width, `at 390 px wide the page scrolls sideways (${phoneWidth} px)`);
      await page.setViewportSize(LAPTOP);

      step('page weight and origins');
      const pieces = await Promise.all(weighed);
      const bytes = pieces.reduce((sum, piece) => sum + piece.bytes, 0);
      step(`document, scripts and styles: ${bytes} bytes in ${pieces.length} response(s)`);
      assert.ok(pieces.some((piece) => piece.type === 'document' && piece.bytes > 0), 'the document was weighed');
      assert.ok(bytes < MAX_PAGE_BYTES, `the page weighs ${bytes} bytes, over ${MAX_PAGE_BYTES}`);
      const elsewhere = requests.filter((url) => {
        const { protocol } = new URL(url);
        if (protocol === 'data:' || protocol === 'blob:' || protocol === 'about:') return false;
        return new URL(url).origin !== origin;
      });
      assert.deepEqual(elsewhere, [], 'the page requests nothing from another origin');
      step(`${requests.length} requests, all to ${origin}`);

      const atRoot = await fetch(`${server.base}/`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(atRoot.status, 200, 'GET / answers 200');
      assert.match(atRoot.headers.get('content-type') ?? '', /^text\/html/);
      assert.equal(await atRoot.text(), await loaded.text(), 'GET / serves the same page as GET /dashboard');

      assertNoErrors(errors);
    });
  });
});

describe('dashboard, behind a token', () => {
  const TOKEN = 'e2e-secret';
  const running = serverAndBrowser({ WORKERS: '4', PROCESSING_DELAY_MS: '200', API_TOKEN: TOKEN });

  test('asks for the token, refuses a wrong one, keeps the right one for the tab', { timeout: 30_000 }, async () => {
    const { server, browser } = running;
    await reportingFailure('token', server, browser, async () => {
      const { page, errors } = browser;
      const dialog = page.getByTestId('token-dialog');
      const tokenInput = dialog.getByLabel('API token');
      const submit = dialog.getByRole('button', { name: 'Continue' });

      step('open /dashboard: the page is served without a token and asks for one');
      const loaded = await page.goto(`${server.base}/dashboard`);
      assert.equal(loaded?.status(), 200);
      await dialog.waitFor({ state: 'visible' });
      const atRoot = await fetch(`${server.base}/`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(atRoot.status, 200, 'GET / is open without a token too');

      step('a wrong token: asked again, with an error');
      await tokenInput.fill('not-the-token');
      await submit.click();
      const refusal = await eventually('the token dialog to show an error', async () => {
        if (!(await dialog.isVisible())) return false;
        return textOf(dialog.getByRole('alert'));
      });
      step(`  it says: ${refusal}`);

      step('the right token: the dialog closes and counts show');
      await tokenInput.fill(TOKEN);
      await submit.click();
      await dialog.waitFor({ state: 'hidden' });
      await eventually('count-total to show a number', async () => (await countOf(page, 'count-total')) === 0);

      const created = await api(server, 'POST', '/orders', {
        body: { userId: 'ann', itemIds: ['book'], totalAmount: 12.5 },
        token: TOKEN,
        expect: 201,
      });
      const id = created.body.order.id;
      const table = page.getByRole('table', { name: 'Latest orders' });
      await eventually(`the row of order ${id}`, async () => (await rowStatus(table, id)) !== null);
      await eventually('count-total to reach 1', async () => (await countOf(page, 'count-total')) === 1);

      step(`open order ${id} from the keyboard once COMPLETED: no Cancel order`);
      await eventually(`row ${id} to show COMPLETED`, async () => (await rowStatus(table, id)) === 'COMPLETED');
      await table.locator(`tr[data-order-id="${id}"]`).getByRole('button', { name: `Order ${id}` }).press('Enter');
      const detail = page.getByTestId('order-detail');
      await detail.waitFor({ state: 'visible' });
      await eventually('the dialog to show COMPLETED', async () =>
        (await textOf(detail.getByTestId('detail-status'))) === 'COMPLETED',
      );
      assert.equal(await detail.getByRole('button', { name: 'Cancel order' }).isVisible(), false);
      await page.keyboard.press('Escape');
      await detail.waitFor({ state: 'hidden' });

      step('reload: not asked again (the token is kept for the tab)');
      await page.reload();
      await eventually(`the row of order ${id} after the reload`, async () => (await rowStatus(table, id)) !== null);
      assert.equal(await dialog.isVisible(), false, 'the token dialog stays closed after a reload');

      // The browser logs each 401 of the wrong token as a failed resource load: expected here.
      const unexpected = errors.filter((error) => !/status of 401/.test(error));
      assertNoErrors(unexpected);
    });
  });
});

describe('dashboard, orders in steps', () => {
  // Two workers, three steps of 2 s each (and as long to compensate each): order 1 runs
  // through, order 2 is cancelled while its steps run.
  const running = serverAndBrowser({ WORKERS: '2', PROCESSING_STEPS: 'reserve,charge,ship', PROCESSING_DELAY_MS: '2000' });

  test('shows the steps advancing, and a cancel that compensates them', { timeout: 60_000 }, async () => {
    const { server, browser } = running;
    await reportingFailure('steps', server, browser, async () => {
      const { page, errors } = browser;
      await page.goto(`${server.base}/dashboard`);
      await eventually('the live indicator to say Live', async () => (await textOf(page.getByTestId('live'))) === 'Live');
      const table = page.getByRole('table', { name: 'Latest orders' });
      const detail = page.getByTestId('order-detail');
      const status = () => textOf(detail.getByTestId('detail-status'));

      step('create order 1 and open it');
      await api(server, 'POST', '/orders', { body: { userId: 'ann', itemIds: ['book'], totalAmount: 12.5 }, expect: 201 });
      await eventually('the row of order 1', async () => (await rowStatus(table, 1)) !== null);
      await table.locator('tr[data-order-id="1"] [data-col="status"]').click();
      await detail.waitFor({ state: 'visible' });

      step('the dialog lists the steps as they start and end');
      // Every list of steps the dialog showed, in turn.
      const seen = [];
      const look = async () => {
        const steps = await detailSteps(detail);
        const line = stepLine(steps);
        if (line && seen.at(-1) !== line) seen.push(line);
        return steps;
      };
      const midway = await eventually(
        'a step RUNNING after reserve SUCCEEDED',
        async () => {
          const steps = await look();
          return steps.length >= 2 && steps[0].status === 'SUCCEEDED' && steps.at(-1).status === 'RUNNING' && steps;
        },
        { timeout: 15_000 },
      );
      assert.equal(midway[0].name, 'reserve');
      assert.ok(midway.every((s) => s.visible), 'every step is shown');
      assert.match(midway[0].times, /^1 attempt · started \d\d:\d\d:\d\d · ended \d\d:\d\d:\d\d \([\d.,]+ s\)$/);
      assert.match(midway.at(-1).times, /^1 attempt · started \d\d:\d\d:\d\d · running for /);
      assert.equal(await status(), 'PROCESSING');

      step(`the table shows the current step (${midway.at(-1).name} · RUNNING, or a later one)`);
      await eventually('the row of order 1 to show a running step', async () => {
        await look();
        return /^(charge|ship) · RUNNING$/.test((await rowStep(table, 1)) ?? '');
      });

      await eventually('the dialog to show COMPLETED with its three steps SUCCEEDED', async () =>
        stepLine(await look()) === 'reserve SUCCEEDED, charge SUCCEEDED, ship SUCCEEDED' && (await status()) === 'COMPLETED',
      { timeout: 15_000 });
      step(`  the dialog showed, in turn: ${seen.join(' | ')}`);
      for (const line of seen) {
        assert.ok(
          'reserve SUCCEEDED, charge SUCCEEDED, ship SUCCEEDED'.startsWith(line.replace(/ RUNNING$/, ' SUCCEEDED')),
          `the steps only moved forward: ${seen.join(' | ')}`,
        );
      }
      assert.ok(seen.length >= 2, `the timeline advanced while the dialog was open: ${seen.join(' | ')}`);
      await eventually('the row of order 1 to show ship · SUCCEEDED', async () => (await rowStep(table, 1)) === 'ship · SUCCEEDED');
      await detail.getByRole('button', { name: 'Close' }).click();
      await detail.waitFor({ state: 'hidden' });

      step('create order 2, open it, and cancel it while its steps run');
      await api(server, 'POST', '/orders', { body: { userId: 'bob', itemIds: ['lamp'], totalAmount: 30 }, expect: 201 });
      await eventually('the row of order 2', async () => (await rowStatus(table, 2)) !== null);
      await table.locator('tr[data-order-id="2"] [data-col="status"]').click();
      await detail.waitFor({ state: 'visible' });
      const cancel = detail.getByRole('button', { name: 'Cancel order' });
      await eventually('a step of order 2 RUNNING, and Cancel order offered', async () => {
        const steps = await detailSteps(detail);
        // Past the first step, so that the cancel has a finished step to undo besides the
        // running one.
        return steps.length >= 2 && steps.at(-1).status === 'RUNNING' && (await cancel.isVisible());
      }, { timeout: 15_000 });
      await cancel.click();
      const message = detail.getByRole('status');
      await eventually('the dialog to say the cancel was requested', async () =>
        /^Cancel requested: .*compensated/.test((await textOf(message)) ?? ''),
      );
      assert.equal(await message.getAttribute('class'), 'message', 'a cancel requested is no error');
      const requested = detail.getByTestId('detail-cancel-requested');
      assert.match((await textOf(requested)) ?? '', /^Cancel requested at .+; the finished steps are being compensated\.$/);
      assert.equal(await cancel.isVisible(), false, 'no second cancel');
      assert.equal(await status(), 'PROCESSING', 'the order stays PROCESSING while its steps are undone');

      await eventually('a step COMPENSATING', async () =>
        (await detailSteps(detail)).some((s) => s.status === 'COMPENSATING'),
      { timeout: 10_000 });
      step('  a step is COMPENSATING; screenshot of the dialog');
      const shot = path.join(SHOTS, 'dashboard-steps.png');
      await detail.screenshot({ path: shot });

      await eventually('the dialog to show CANCELLED', async () => (await status()) === 'CANCELLED', { timeout: 20_000 });
      const undone = await eventually('every step COMPENSATED', async () => {
        const steps = await detailSteps(detail);
        return steps.length >= 2 && steps.every((s) => s.status === 'COMPENSATED') && steps;
      });
      step(`  ended CANCELLED: ${stepLine(undone)}`);
      for (const s of undone) {
        assert.match(s.times, /· 1 compensation attempt · started .* · ended .* · compensated \d\d:\d\d:\d\d$/);
      }
      assert.match((await textOf(requested)) ?? '', /^Cancel requested at [^;]+\.$/);
      assert.equal(await textOf(message), 'Cancelled; the finished steps were compensated.');
      await eventually('the row of order 2 to show its last step COMPENSATED', async () =>
        (await rowStep(table, 2)) === `${undone.at(-1).name} · COMPENSATED`,
      );
      const order = (await api(server, 'GET', '/orders/2', { expect: 200 })).body.order;
      assert.equal(order.status, 'CANCELLED', 'the API agrees that order 2 is CANCELLED');
      assert.deepEqual(order.steps.map((s) => `${s.name} ${s.status}`), undone.map((s) => `${s.name} ${s.status}`));

      assertNoErrors(errors);
    });
  });
});

describe('dashboard, a failed order retried', () => {
  // Every run of every order fails for good: a retry runs the order again, and it fails
  // again, with its first failure kept.
  const running = serverAndBrowser({ WORKERS: '2', PROCESSING_DELAY_MS: '300', SIMULATED_FAILURE_RATE: '1' });

  test('retries a FAILED order from its dialog and shows its earlier failure', { timeout: 60_000 }, async () => {
    const { server, browser } = running;
    await reportingFailure('retry', server, browser, async () => {
      const { page, errors } = browser;
      await page.goto(`${server.base}/dashboard`);
      await eventually('the live indicator to say Live', async () => (await textOf(page.getByTestId('live'))) === 'Live');
      const table = page.getByRole('table', { name: 'Latest orders' });
      const detail = page.getByTestId('order-detail');
      const status = () => textOf(detail.getByTestId('detail-status'));

      step('create order 1; it fails; open it');
      await api(server, 'POST', '/orders', { body: { userId: 'ann', itemIds: ['book'], totalAmount: 12.5 }, expect: 201 });
      await eventually('the row of order 1 to say FAILED', async () => (await rowStatus(table, 1)) === 'FAILED', { timeout: 15_000 });
      await table.locator('tr[data-order-id="1"] [data-col="status"]').click();
      await detail.waitFor({ state: 'visible' });
      const retry = detail.getByRole('button', { name: 'Retry order' });
      await eventually('Retry order offered for the FAILED order', async () => (await status()) === 'FAILED' && retry.isVisible());
      assert.equal(await detail.getByRole('button', { name: 'Cancel order' }).isVisible(), false, 'a FAILED order cannot be cancelled');
      assert.equal(await detail.getByTestId('detail-failures').isVisible(), false, 'no earlier failure yet');

      step('retry it: PENDING again, its failure kept; it runs and fails again');
      await retry.click();
      const message = detail.getByRole('status');
      await eventually('the dialog to say the order was retried', async () => /^Retried: /.test((await textOf(message)) ?? ''));
      assert.equal(await message.getAttribute('class'), 'message', 'a retry is no error');
      const failures = detail.getByTestId('detail-failures');
      await eventually('the earlier failure listed', async () => (await failures.locator('li').count()) === 1);
      assert.match(
        (await textOf(failures.locator('li').first())) ?? '',
        /^.+, after 1 attempt: processing failed \(simulated\)$/,
      );
      // The dialog follows the new run to its end.
      await eventually('the dialog to show FAILED after a second attempt', async () =>
        (await status()) === 'FAILED' && (await textOf(detail.locator('#detail-attempts'))) === '2',
      { timeout: 15_000 });
      await eventually('Retry order offered again', async () => retry.isVisible());
      const order = (await api(server, 'GET', '/orders/1', { expect: 200 })).body.order;
      assert.equal(order.attempts, 2);
      assert.equal(order.failures.length, 1, 'the API keeps the first failure');

      step('a second retry of the same failure is refused by the API');
      await api(server, 'POST', '/orders/1/retry', { expect: 200 });
      const again = await api(server, 'POST', '/orders/1/retry', { expect: 409 });
      // 300 ms of processing lie between the two: the second finds the order still running.
      assert.match(again.body.error, /^order 1 is (PENDING|PROCESSING); only a FAILED order can be retried$/);
      assertNoErrors(errors);
    });
  });

  test('retries all failed orders of the filter after a confirmation that says how many', { timeout: 60_000 }, async () => {
    const { server, browser } = running;
    await reportingFailure('bulk-retry', server, browser, async () => {
      const { page, errors } = browser;
      await page.goto(`${server.base}/dashboard`);
      await eventually('the live indicator to say Live', async () => (await textOf(page.getByTestId('live'))) === 'Live');
      step('three orders of user cy fail');
      const ids = [];
      for (let i = 0; i < 3; i += 1) {
        ids.push((await api(server, 'POST', '/orders', { body: { userId: 'cy', itemIds: ['mug'], totalAmount: 4 }, expect: 201 })).body.order.id);
      }
      await eventually('the three FAILED', async () => {
        const orders = await Promise.all(ids.map(async (id) => (await api(server, 'GET', `/orders/${id}`)).body.order));
        return orders.every((order) => order.status === 'FAILED');
      }, { timeout: 15_000 });

      step('filter on FAILED orders of cy: only "Retry all failed" is offered');
      await page.locator('#filter-status').selectOption('FAILED');
      await page.locator('#filter-user').fill('cy');
      const retryAll = page.getByTestId('bulk-retry');
      await eventually('Retry all failed offered, Cancel all pending not', async () =>
        (await retryAll.isVisible()) && !(await page.getByTestId('bulk-cancel').isVisible()));
      await retryAll.click();
      const dialog = page.getByTestId('bulk-dialog');
      await dialog.waitFor({ state: 'visible' });
      await eventually('the confirmation to say how many', async () =>
        /^Retry 3 failed orders of user cy\? /.test((await textOf(dialog.getByTestId('bulk-text'))) ?? ''));
      const confirm = dialog.getByTestId('bulk-confirm');
      assert.equal(await textOf(confirm), 'Retry 3');

      step('confirm: the action goes through the three, and they run again');
      await confirm.click();
      await eventually('the dialog to say it is done', async () =>
        /^Done: 3 retried, 0 left alone/.test((await textOf(dialog.getByTestId('bulk-progress'))) ?? ''),
      { timeout: 15_000 });
      await eventually('each of the three retried once', async () => {
        const orders = await Promise.all(ids.map(async (id) => (await api(server, 'GET', `/orders/${id}`)).body.order));
        return orders.every((order) => order.failures.length === 1 && order.attempts === 2);
      }, { timeout: 15_000 });
      await dialog.getByRole('button', { name: 'Close' }).click();
      await dialog.waitFor({ state: 'hidden' });
      assertNoErrors(errors);
    });
  });
});
