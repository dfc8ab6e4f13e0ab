// What the browser tests share: the machine's Chromium, driven by playwright-core (no browser
// is downloaded), and an order-server started for one test and stopped after it.
//
// Environment:
//   ORDER_SERVER_BIN  the server binary (default: <repo>/target/debug/order-server)
//   CHROMIUM          the browser (default: /usr/bin/chromium)
//   E2E_SHOTS         where the screenshots go (default: <repo>/target)

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SERVER_BIN = path.resolve(
  REPO,
  process.env.ORDER_SERVER_BIN || path.join('target', 'debug', 'order-server'),
);
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SHOTS = path.resolve(REPO, process.env.E2E_SHOTS || 'target');

// Quiet, offline, and nothing kept between runs: every launch has a fresh profile.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

const started = Date.now();

/** One progress line, with the seconds since the run began. */
export function step(message) {
  const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`  [${seconds} s] ${message}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Chromium with a fresh profile directory, removed by `close()`. Returns the context, its first
 * page, and `errors`: every uncaught page error and console error, for `assertNoErrors`.
 */
export async function openBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  const profile = await mkdtemp(path.join(tmpdir(), 'order-e2e-profile-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport,
      timeout: 30_000,
    });
  } catch (err) {
    await rm(profile, { recursive: true, force: true });
    throw err;
  }
  context.setDefaultTimeout(10_000);
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on('pageerror', (err) => errors.push(`page error: ${err.stack || err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') {
      errors.push(`console error: ${message.text()} (${message.location().url || 'no url'})`);
    }
  });
  return {
    context,
    page,
    errors,
    async close() {
      try {
        await context.close();
      } finally {
        await rm(profile, { recursive: true, force: true });
      }
    },
  };
}

/**
 * An order-server on 127.0.0.1 and a free port, in memory, with a clean environment plus
 * `env`. Resolves once it logs its address; `stop()` sends SIGTERM, then SIGKILL after 5 s.
 * `logs()` is its last log lines, for a failure report.
 */
export async function startServer(env = {}) {
  const child = spawn(SERVER_BIN, [], {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_FORMAT: 'json',
      RUST_LOG: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  const keep = (line) => {
    lines.push(line);
    if (lines.length > 60) lines.shift();
  };
  // Why the process is gone, once it is: an exit, a signal, or a spawn that failed (which
  // never exits).
  let exited = null;
  const exit = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = signal ? `signal ${signal}` : `code ${code}`;
      resolve();
    });
    child.on('error', (err) => {
      if (child.pid === undefined) {
        exited = `cannot start ${SERVER_BIN}: ${err.message}; build it with cargo build -p order-server`;
        resolve();
      }
    });
  });

  const address = new Promise((resolve, reject) => {
    exit.then(() => reject(new Error(`order-server is not running (${exited})`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      keep(line);
      try {
        const found = JSON.parse(line)?.fields?.address;
        if (found) resolve(found);
      } catch {
        // Not JSON: kept for the report, never the address.
      }
    });
    createInterface({ input: child.stderr }).on('line', keep);
  });

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('order-server did not log its address within 30 s')), 30_000);
  });
  const server = {
    child,
    base: '',
    logs: () => lines.join('\n'),
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const killed = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(killed);
    },
  };
  try {
    server.base = `http://${await Promise.race([address, timeout])}`;
  } catch (err) {
    await server.stop();
    err.message += `\n--- order-server log ---\n${server.logs()}`;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return server;
}

/** A JSON call to the API with a bounded time; `token` adds the bearer header. */
export async function api(server, method, route, { body, token, expect } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(server.base + route, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  if (expect !== undefined && response.status !== expect) {
    throw new Error(`${method} ${route}: expected ${expect}, got ${response.status}: ${text}`);
  }
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/**
 * Polls `probe` until it returns a truthy value (which is returned), at most `timeout` ms;
 * then fails with `what` and the last value seen.
 */
export async function eventually(what, probe, { timeout = 10_000, every = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await sleep(every);
  }
}

/** Fails with every error the page reported, if it reported any. */
export function assertNoErrors(errors) {
  if (errors.length > 0) {
    throw new Error(`the page reported ${errors.length} error(s):\n${errors.join('\n')}`);
  }
}

/** The number an element shows, thousands separators and spaces allowed. */
export function parseCount(text) {
  const digits = (text ?? '').replace(/[\s,\u00a0\u202f]/g, '');
  return /^\d+$/.test(digits) ? Number(digits) : NaN;
}
