'use strict';
// The dashboard reads the API like any client, relative to where the page is served, so it
// works at `/`, at `/dashboard` and under whatever prefix the API is nested at.
(() => {
  const base = location.pathname.replace(/\/(dashboard\/?)?$/, '');
  const STATUSES = ['PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED'];
  const TOKEN_KEY = 'order-server.token';
  const WINDOW_MS = 5 * 60 * 1000;
  const PAGE_SIZE = 20;
  const $ = (id) => document.getElementById(id);
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);
  const count = new Intl.NumberFormat();
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const money = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- Requests, with the token the API may ask for ------------------------------------

  // Session storage may be refused (a privacy setting): the token is then kept for this page
  // only, and the page still works.
  const stored = {
    get() {
      try {
        return sessionStorage.getItem(TOKEN_KEY);
      } catch {
        return null;
      }
    },
    set(value) {
      try {
        if (value == null) sessionStorage.removeItem(TOKEN_KEY);
        else sessionStorage.setItem(TOKEN_KEY, value);
      } catch { /* kept in memory only */ }
    },
  };
  let token = stored.get();
  let tokenAsked = null;

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === 'string') return new HttpError(response.status, body.error);
    } catch { /* not JSON: fall through */ }
    return new HttpError(response.status, `HTTP ${response.status}`);
  }

  // Answers the request; on 401 asks for a token (once for every request waiting) and retries.
  async function api(path, options = {}) {
    for (;;) {
      const sent = token;
      const headers = new Headers(options.headers);
      if (sent) headers.set('Authorization', `Bearer ${sent}`);
      const response = await fetch(base + path, { ...options, headers, cache: 'no-store' });
      if (response.status !== 401) return response;
      const reason = (await errorOf(response)).message;
      // A token entered while this request was out: try again with it.
      if (token !== sent) continue;
      await askForToken(sent ? `That token was not accepted (${reason}). Check it and try again.` : '');
    }
  }

  async function apiJson(path, options) {
    const response = await api(path, options);
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  const tokenDialog = $('token');
  let tokenEntered = null;
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token-input').value.trim();
    // What an Authorization header can carry; anything else would fail every request.
    if (!/^[\x21-\x7e]+$/.test(value)) {
      $('token-error').textContent = value
        ? 'A token is printable ASCII characters, without spaces.'
        : 'Enter the token this server was started with (API_TOKEN).';
      return;
    }
    token = value;
    $('forget-token').hidden = false;
    const entered = tokenEntered;
    tokenAsked = null;
    tokenEntered = null;
    tokenDialog.close();
    stored.set(value);
    if (entered) entered();
  });
  // Without a token nothing can be shown: the dialog cannot be dismissed.
  tokenDialog.addEventListener('cancel', (event) => event.preventDefault());
  tokenDialog.addEventListener('close', () => {
    if (tokenAsked) tokenDialog.showModal();
  });

  function askForToken(error) {
    if (!tokenAsked) {
      tokenAsked = new Promise((resolve) => {
        tokenEntered = resolve;
      });
      $('token-error').textContent = error;
      $('token-input').value = '';
      if (!tokenDialog.open) tokenDialog.showModal();
      $('token-input').focus();
    }
    return tokenAsked;
  }
  $('forget-token').hidden = !token;
  $('forget-token').addEventListener('click', () => {
    stored.set(null);
    location.reload();
  });

  // Server-Sent Events over fetch, which (unlike EventSource) can send the token.
  async function stream(path, onEvent, signal) {
    const response = await api(path, { signal, headers: { Accept: 'text/event-stream' } });
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      await readEvents(reader, onEvent);
    } finally {
      // Whatever stopped the reading, the connection is let go.
      reader.cancel().catch(() => {});
    }
  }

  async function readEvents(reader, onEvent) {
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (!line || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') name = text;
          else if (field === 'data') data.push(text);
        }
        if (data.length) onEvent(name, JSON.parse(data.join('\n')));
      }
    }
  }

  // ---- Formatting ----------------------------------------------------------------------

  function duration(seconds) {
    if (seconds == null) return '–';
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${decimal.format(seconds)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }
  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : '–');
  const dateTime = (iso) => (iso ? new Date(iso).toLocaleString([], { hour12: false }) : '–');
  const amount = (value) => money.format(Number(value));

  function processingTime(order) {
    if (!order.processingStartTime) return '–';
    const start = Date.parse(order.processingStartTime);
    if (order.processingEndTime) return duration((Date.parse(order.processingEndTime) - start) / 1000);
    return order.status === 'PROCESSING' ? `running ${duration((Date.now() - start) / 1000)}` : '–';
  }

  // Times as the API writes them (RFC 3339, UTC, 0 to 9 digits of fraction), made comparable
  // as text: the fraction padded to nanoseconds.
  function stamp(iso) {
    const [whole, fraction = ''] = iso.replace(/Z$/, '').split('.');
    return `${whole}.${fraction.padEnd(9, '0')}`;
  }
  // Whether `order` is an older snapshot of the order than `than`.
  const older = (order, than) => order.id === than.id && stamp(order.updatedAt) < stamp(than.updatedAt);
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function badge(element, status) {
    setText(element, status);
    element.className = `badge s-${status}`;
  }

  // ---- Counts, queue and charts, from GET /metrics/stream -------------------------------

  let samples = [];

  function setConnection(element, textElement, state, text) {
    element.dataset.state = state;
    setText(textElement, text);
  }
  const connection = (state, text) => setConnection(byTestId('live'), $('conn-text'), state, text);

  function showSample(sample, completed) {
    for (const status of STATUSES) {
      setText(byTestId(`count-${status}`), count.format(sample.statuses[status.toLowerCase()]));
    }
    setText(byTestId('count-total'), count.format(sample.totalOrders));
    const queue = sample.queue;
    setText(byTestId('queue-depth'), count.format(queue.ready + queue.delayed + queue.claimed));
    setText($('queue-ready'), count.format(queue.ready));
    setText($('queue-delayed'), count.format(queue.delayed));
    setText($('queue-claimed'), count.format(queue.claimed));
    setText(byTestId('oldest-pending'), sample.oldestPendingAgeSeconds == null ? 'none' : duration(sample.oldestPendingAgeSeconds));
    setText($('throughput-now'), `${decimal.format(completed[completed.length - 1])}/s now`);
    const recent = samples.slice(-10).filter((s) => s.avgProcessingSeconds != null);
    const mean = recent.length ? recent.reduce((sum, s) => sum + s.avgProcessingSeconds, 0) / recent.length : null;
    setText($('processing-now'), mean == null ? 'no completions lately' : `${duration(mean)} lately`);
  }

  // A line through the samples of the last five minutes. It breaks where samples are missing
  // (the server or its storage was down) and runs on past samples without a value (no order
  // completed); a point on its own is drawn as a dot.
  function linePath(values, times, now, top) {
    let path = '';
    let broken = true;
    values.forEach((value, i) => {
      if (i > 0 && times[i] - times[i - 1] > 3000) broken = true;
      if (value == null) return;
      const x = 300 - ((now - times[i]) / WINDOW_MS) * 300;
      if (x < 0) return;
      const y = 100 - (value / top) * 96;
      path += broken ? `M${x.toFixed(1)} ${y.toFixed(1)}l0 0` : `L${x.toFixed(1)} ${y.toFixed(1)}`;
      broken = false;
    });
    return path;
  }

  function niceTop(max) {
    if (!(max > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(max));
    return [1, 2, 2.5, 5, 10].map((step) => step * power).find((top) => top >= max);
  }

  // Rates averaged over the last few samples: one-second counts of a steady flow of
  // multi-second orders jump between 0 and n.
  const SMOOTHING = 5;
  function smoothed(key) {
    return samples.map((_, i) => {
      const window = samples.slice(Math.max(0, i - SMOOTHING + 1), i + 1);
      return window.reduce((sum, s) => sum + s[key], 0) / window.length;
    });
  }

  function drawCharts(completed) {
    if (!samples.length) return;
    const times = samples.map((s) => Date.parse(s.at));
    const now = times[times.length - 1];
    const failed = smoothed('failedPerSecond');
    const processing = samples.map((s) => s.avgProcessingSeconds);
    const throughputTop = niceTop(Math.max(...completed, ...failed));
    const throughput = $('chart-throughput');
    throughput.querySelector('.completed').setAttribute('d', linePath(completed, times, now, throughputTop));
    throughput.querySelector('.failed').setAttribute('d', linePath(failed, times, now, throughputTop));
    setText($('throughput-max'), `${decimal.format(throughputTop)}/s`);
    const peak = Math.max(...completed);
    throughput.setAttribute('aria-label', `Throughput over the last five minutes: ${decimal.format(completed[completed.length - 1])} completed per second now, peak ${decimal.format(peak)}`);
    const known = processing.filter((v) => v != null);
    const processingTop = niceTop(Math.max(0, ...known));
    const chart = $('chart-processing');
    chart.querySelector('.processing').setAttribute('d', linePath(processing, times, now, processingTop));
    setText($('processing-max'), known.length ? duration(processingTop) : '');
    chart.setAttribute('aria-label', known.length
      ? `Processing time over the last five minutes: longest mean ${duration(Math.max(...known))}, latest ${duration(known[known.length - 1])}`
      : 'Processing time: no order completed in the last five minutes');
  }

  let countsSeen = '';
  let tableReadAt = 0;
  // Whether this server runs orders in steps (some order had one): their steps move while the
  // counts stand still.
  let pipelines = false;
  const stepsMoving = () => pipelines && [...rows.values()].some((row) => row.order.status === 'PROCESSING');
  function onMetrics(name, data) {
    lastEventAt = Date.now();
    if (name === 'unavailable') {
      // The server is up but cannot read the counts: its storage is down.
      connection('offline', 'Storage unavailable');
      return;
    }
    if (name === 'history') samples = data.samples;
    else if (name === 'sample') samples.push(data);
    else return;
    const cutoff = samples.length ? Date.parse(samples[samples.length - 1].at) - WINDOW_MS : 0;
    while (samples.length && Date.parse(samples[0].at) < cutoff) samples.shift();
    connection('live', 'Live');
    if (!samples.length) return;
    const latest = samples[samples.length - 1];
    // Once per sample, for the figure and its chart both.
    const completed = smoothed('completedPerSecond');
    showSample(latest, completed);
    drawCharts(completed);
    // The table is read again when some order has moved, and every few seconds anyway (a
    // retry and a start at once leave the counts as they were); every second while orders
    // are in their steps.
    const counts = JSON.stringify([latest.totalOrders, latest.statuses]);
    const every = stepsMoving() ? 1000 : 5000;
    if (counts !== countsSeen || Date.now() - tableReadAt >= every) {
      countsSeen = counts;
      refreshTable();
    }
  }

  // The stream, again and again: after the server closed it (a restart), after an error, and
  // when it went silent (a connection lost without a word, as after a laptop's sleep). The
  // server sends something every second while it runs.
  let lastEventAt = 0;
  async function followMetrics() {
    let backoff = 1000;
    for (;;) {
      const abort = new AbortController();
      lastEventAt = Date.now();
      const silence = setInterval(() => {
        if (Date.now() - lastEventAt > 5000) abort.abort();
      }, 1000);
      try {
        await stream('/metrics/stream', (name, data) => {
          backoff = 1000;
          onMetrics(name, data);
        }, abort.signal);
        connection('offline', 'Reconnecting…');
      } catch (error) {
        const state = abort.signal.aborted ? 'stale' : 'offline';
        connection(state, abort.signal.aborted ? 'No data; reconnecting…' : 'Offline; reconnecting…');
        byTestId('live').title = error instanceof HttpError ? error.message : '';
      } finally {
        clearInterval(silence);
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  // ---- The latest orders ---------------------------------------------------------------

  const rows = new Map();
  const cursors = [];
  let nextCursor = null;
  let tableBusy = false;
  let tableAgain = false;
  let tableShownAt = 0;
  // Counts the changes of filters and page: an answer to an older question is not shown.
  let tableGeneration = 0;

  function filterQuery() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const status = $('filter-status').value;
    const user = $('filter-user').value.trim();
    if (status) query.set('status', status);
    if (user) query.set('userId', user);
    if (cursors.length) query.set('after', cursors[cursors.length - 1]);
    return query;
  }

  function rowFor(order) {
    let row = rows.get(order.id);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.orderId = String(order.id);
      const cells = ['id', 'user', 'status', 'step', 'amount', 'attempts', 'created', 'processing', 'updated'];
      for (const name of cells) {
        const cell = document.createElement('td');
        cell.dataset.col = name;
        // Narrow screens keep the id, user, status and amount.
        if (['step', 'attempts', 'created', 'processing', 'updated'].includes(name)) cell.classList.add('wide');
        if (name === 'amount' || name === 'attempts') cell.classList.add('num');
        if (name === 'user') cell.classList.add('user');
        row.append(cell);
      }
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'open';
      open.textContent = `#${order.id}`;
      open.setAttribute('aria-label', `Order ${order.id}`);
      row.cells[0].append(open);
      const status = document.createElement('span');
      row.cells[2].append(status);
      // The step: its name, then its status.
      row.cells[3].append(document.createElement('span'), document.createElement('span'));
      row.addEventListener('click', () => openOrder(order.id));
      rows.set(order.id, row);
    }
    const cell = (name) => row.querySelector(`[data-col="${name}"]`);
    // A read that started before a newer snapshot (the dialog's) does not take the row back.
    if (row.order && older(order, row.order)) order = row.order;
    row.order = order;
    if (order.steps.length) pipelines = true;
    setText(cell('user'), order.userId);
    cell('user').title = order.userId;
    badge(cell('status').firstChild, order.status);
    const step = order.steps[order.steps.length - 1];
    const stepCell = cell('step');
    setText(stepCell.firstChild, step ? `${step.name} · ` : '—');
    setText(stepCell.lastChild, step ? step.status : '');
    stepCell.lastChild.className = step ? `st-${step.status}` : '';
    stepCell.title = step ? `${step.name} · ${step.status}` : '';
    setText(cell('amount'), amount(order.totalAmount));
    setText(cell('attempts'), String(order.attempts));
    setText(cell('created'), time(order.createdAt));
    cell('created').title = order.createdAt;
    setText(cell('processing'), processingTime(order));
    setText(cell('updated'), time(order.updatedAt));
    return row;
  }

  function showOrders(page) {
    const body = $('rows');
    const wanted = page.orders.map(rowFor);
    const keep = new Set(wanted);
    for (const [id, row] of rows) {
      if (!keep.has(row)) {
        row.remove();
        rows.delete(id);
      }
    }
    // Rows already in place stay (and keep focus); new ones are slotted in.
    wanted.forEach((row, i) => {
      if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
    nextCursor = page.nextCursor;
    $('page-older').disabled = !nextCursor;
    $('page-newest').disabled = cursors.length === 0;
    const filtered = $('filter-status').value || $('filter-user').value.trim();
    setText($('table-note'), page.orders.length ? '' : filtered ? 'No orders match these filters.' : 'No orders yet.');
  }

  // While the pointer is on a row or focus is in the table, rows neither move nor go: their
  // cells still change, and newer orders wait until the pointer or focus leaves, so that a
  // click under load opens the order that was under the pointer.
  const tableBody = $('rows');
  let shownGeneration = -1;
  let heldPage = null;
  const holding = () => tableBody.matches(':hover') || tableBody.contains(document.activeElement);

  function holdOrders(page) {
    heldPage = page;
    let newer = 0;
    for (const order of page.orders) {
      if (rows.has(order.id)) rowFor(order);
      else newer += 1;
    }
    setText($('table-note'), newer ? `${newer} more recent order${newer === 1 ? '' : 's'} will show when the pointer leaves the table.` : '');
  }

  function releaseOrders() {
    if (!heldPage || holding()) return;
    const page = heldPage;
    heldPage = null;
    showOrders(page);
  }
  tableBody.addEventListener('pointerleave', releaseOrders);
  tableBody.addEventListener('focusout', () => setTimeout(releaseOrders, 0));

  // At most one read in flight and at most one a second; a change meanwhile reads once more.
  async function refreshTable() {
    if (tableBusy) {
      tableAgain = true;
      return;
    }
    tableBusy = true;
    try {
      let asked;
      do {
        tableAgain = false;
        const wait = tableShownAt + 1000 - Date.now();
        if (wait > 0) await sleep(wait);
        tableShownAt = Date.now();
        asked = tableGeneration;
        try {
          const page = await apiJson(`/orders?${filterQuery()}`);
          // An answer for filters or a page no longer shown is dropped; the loop asks again.
          if (asked !== tableGeneration) continue;
          // Filters or a page asked for are shown at once; a refresh may be held.
          if (asked === shownGeneration && holding()) {
            holdOrders(page);
          } else {
            heldPage = null;
            shownGeneration = asked;
            showOrders(page);
          }
          tableReadAt = Date.now();
        } catch (error) {
          if (asked === tableGeneration) setText($('table-note'), `Could not load orders: ${error.message}`);
        }
      } while (tableAgain || asked !== tableGeneration);
    } finally {
      tableBusy = false;
    }
  }

  // Another question for the table: asked now, and earlier answers dropped.
  function askTable() {
    tableGeneration += 1;
    tableShownAt = 0;
    refreshTable();
  }
  function filtersChanged() {
    cursors.length = 0;
    askTable();
  }
  $('filters').addEventListener('submit', (event) => {
    event.preventDefault();
    filtersChanged();
  });
  $('filter-status').addEventListener('change', filtersChanged);
  let typing;
  $('filter-user').addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(filtersChanged, 300);
  });
  $('page-older').addEventListener('click', () => {
    if (!nextCursor) return;
    cursors.push(nextCursor);
    askTable();
  });
  $('page-newest').addEventListener('click', () => {
    cursors.length = 0;
    askTable();
  });
  // Running processing times tick on between reads, in the table and the dialog.
  setInterval(() => {
    for (const row of rows.values()) {
      if (row.order.status === 'PROCESSING') setText(row.querySelector('[data-col="processing"]'), processingTime(row.order));
    }
    if (shownOrder?.status === 'PROCESSING') showSteps(shownOrder);
  }, 1000);

  // ---- One order: its details, live, and cancelling or retrying it ----------------------

  let watching = null;
  let shownId = null;
  let shownOrder = null;
  // The order whose cancel was accepted with 202: its end is told when it comes.
  let cancelAsked = null;
  const TERMINAL = ['COMPLETED', 'FAILED', 'CANCELLED'];
  const STEP_ICONS = { RUNNING: '●', RETRYING: '↻', SUCCEEDED: '✓', FAILED: '✕', COMPENSATING: '↺', COMPENSATED: '↩' };
  const UNDONE = ['FAILED', 'COMPENSATING', 'COMPENSATED'];

  function stepTimes(step, order) {
    const parts = [plural(step.attempts, 'attempt')];
    if (step.compensationAttempts > 0) parts.push(plural(step.compensationAttempts, 'compensation attempt'));
    const start = Date.parse(step.startedAt);
    parts.push(`started ${time(step.startedAt)}`);
    if (step.endedAt) {
      parts.push(`ended ${time(step.endedAt)} (${duration((Date.parse(step.endedAt) - start) / 1000)})`);
      if (step.compensatedAt) parts.push(`compensated ${time(step.compensatedAt)}`);
    } else if (order.status === 'PROCESSING' && ['RUNNING', 'RETRYING'].includes(step.status)) {
      parts.push(`running for ${duration(Math.max(0, Date.now() - start) / 1000)}`);
    }
    return parts.join(' · ');
  }

  // The steps as a timeline, one item each, kept in place as they change.
  function showSteps(order) {
    const list = $('detail-steps');
    $('detail-steps-box').hidden = order.steps.length === 0;
    while (list.children.length > order.steps.length) list.lastChild.remove();
    order.steps.forEach((step, i) => {
      let item = list.children[i];
      if (!item) {
        item = document.createElement('li');
        item.innerHTML = '<span class="step-icon" aria-hidden="true"></span><div><p class="step-head"><span class="step-name"></span> <span class="badge"></span></p><p class="step-times"></p><p class="step-error"></p></div>';
        list.append(item);
      }
      item.dataset.status = step.status;
      const icon = item.querySelector('.step-icon');
      setText(icon, STEP_ICONS[step.status] || '•');
      icon.className = `step-icon st-${step.status}`;
      setText(item.querySelector('.step-name'), step.name);
      badge(item.querySelector('.badge'), step.status);
      const times = item.querySelector('.step-times');
      setText(times, stepTimes(step, order));
      times.title = step.endedAt ? `${dateTime(step.startedAt)} – ${dateTime(step.endedAt)}` : dateTime(step.startedAt);
      const error = item.querySelector('.step-error');
      setText(error, step.error || '');
      error.hidden = !step.error;
    });
  }

  // The failures a retried order keeps, oldest first.
  function showFailures(order) {
    const failures = order.failures || [];
    $('detail-failures-box').hidden = failures.length === 0;
    const list = $('detail-failures');
    while (list.children.length > failures.length) list.lastChild.remove();
    failures.forEach((failure, i) => {
      let item = list.children[i];
      if (!item) {
        item = document.createElement('li');
        list.append(item);
      }
      const step = failure.step ? ` in ${failure.step}` : '';
      setText(item, `${dateTime(failure.failedAt)}${step}, after ${plural(failure.attempts, 'attempt')}: ${failure.error}`);
    });
  }

  function showDetail(order) {
    // A snapshot older than the one shown (a read overtaken by the stream's) is dropped.
    if (shownOrder && older(order, shownOrder)) return;
    shownOrder = order;
    setText($('detail-id'), `#${order.id}`);
    badge($('detail-status'), order.status);
    setText($('detail-user'), order.userId);
    setText($('detail-amount'), amount(order.totalAmount));
    setText($('detail-attempts'), String(order.attempts));
    setText($('detail-created'), dateTime(order.createdAt));
    setText($('detail-updated'), dateTime(order.updatedAt));
    setText($('detail-started'), dateTime(order.processingStartTime));
    setText($('detail-ended'), order.processingEndTime ? `${dateTime(order.processingEndTime)} (${processingTime(order)})` : '–');
    setText($('detail-items'), order.itemIds.join(', '));
    setText($('detail-error'), order.lastError || '–');
    const requested = $('detail-cancel-requested');
    requested.hidden = !order.cancelRequestedAt;
    setText(requested, order.cancelRequestedAt
      ? `Cancel requested at ${dateTime(order.cancelRequestedAt)}${order.status === 'PROCESSING' ? '; the finished steps are being compensated.' : '.'}`
      : '');
    showSteps(order);
    showFailures(order);
    if (cancelAsked === order.id && TERMINAL.includes(order.status)) {
      cancelAsked = null;
      say(order.status === 'CANCELLED' ? 'Cancelled; the finished steps were compensated.' : `The order ended ${order.status}.`);
    }
    const cancel = $('detail-cancel');
    // A PENDING order, or one PROCESSING in steps with none undone yet and no cancel asked
    // for (the server refuses with 409 when a step cannot be undone).
    const hide = !(order.status === 'PENDING' || (order.status === 'PROCESSING' && order.steps.length > 0
      && !order.cancelRequestedAt && !order.steps.some((step) => UNDONE.includes(step.status))));
    if (hide && document.activeElement === cancel) $('detail-close').focus();
    cancel.hidden = hide;
    const retry = $('detail-retry');
    const noRetry = order.status !== 'FAILED';
    if (noRetry && document.activeElement === retry) $('detail-close').focus();
    retry.hidden = noRetry;
    const row = rows.get(order.id);
    if (row) rowFor(order);
  }

  const detailConnection = (state, text) => setConnection($('detail-live'), $('detail-live-text'), state, text);

  function say(text, error = false) {
    setText($('detail-message'), text);
    $('detail-message').className = error ? 'message error' : 'message';
  }

  // The stream tells of each change of status; the steps of a PROCESSING order and a cancel
  // request move without one: while the order is PROCESSING it is read again every second.
  async function pollOrder(id, signal) {
    while (!signal.aborted && shownId === id) {
      await sleep(1000);
      if (signal.aborted || shownId !== id || !shownOrder) return;
      if (TERMINAL.includes(shownOrder.status)) return;
      if (shownOrder.status !== 'PROCESSING') continue;
      try {
        const body = await apiJson(`/orders/${id}`, { signal });
        if (shownId === id && !signal.aborted) showDetail(body.order);
      } catch { /* the stream tells whether the server is there */ }
    }
  }

  async function watchOrder(id, signal) {
    let backoff = 1000;
    while (!signal.aborted) {
      let last = null;
      try {
        detailConnection('connecting', 'Connecting…');
        await stream(`/orders/${id}/events`, (name, data) => {
          if (name !== 'status' || shownId !== id || signal.aborted) return;
          last = data.order;
          backoff = 1000;
          showDetail(last);
          detailConnection('live', 'Live');
        }, signal);
        if (last && TERMINAL.includes(last.status)) {
          detailConnection('done', 'Final');
          return;
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof HttpError && error.status === 404) {
          detailConnection('offline', 'Not found');
          return;
        }
        detailConnection('offline', 'Reconnecting…');
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  // Follows the order shown: its stream, and its reads while PROCESSING.
  function follow(id) {
    if (watching) watching.abort();
    watching = new AbortController();
    watchOrder(id, watching.signal);
    pollOrder(id, watching.signal);
  }

  function openOrder(id) {
    const row = rows.get(id);
    shownId = id;
    shownOrder = null;
    cancelAsked = null;
    say('');
    if (row) showDetail(row.order);
    follow(id);
    const dialog = $('detail');
    if (!dialog.open) dialog.showModal();
  }

  $('detail').addEventListener('close', () => {
    shownId = null;
    shownOrder = null;
    if (watching) watching.abort();
    watching = null;
  });
  $('detail-close').addEventListener('click', () => $('detail').close());
  // An action on the order shown: POSTs `/orders/{id}/{action}` with its button disabled,
  // then `done(response, body)` if the dialog still shows that order; errors are said there.
  function orderAction(buttonId, action, done) {
    const button = $(buttonId);
    button.addEventListener('click', async () => {
      const id = shownId;
      button.disabled = true;
      try {
        const response = await api(`/orders/${id}/${action}`, { method: 'POST' });
        if (!response.ok) throw await errorOf(response);
        const body = await response.json();
        if (shownId === id) done(response, body, id);
        refreshTable();
      } catch (error) {
        if (shownId === id) say(error.message, true);
      } finally {
        button.disabled = false;
        // The button hides once the action no longer applies: focus stays in the dialog.
        if (button.hidden && $('detail').open) $('detail-close').focus();
      }
    });
  }

  orderAction('detail-cancel', 'cancel', (response, body, id) => {
    // 202: the order is PROCESSING in steps; it ends CANCELLED once they are undone.
    const requested = response.status === 202;
    say(requested ? 'Cancel requested: the running step finishes, then the finished steps are compensated and the order ends CANCELLED.' : 'Cancelled.');
    cancelAsked = requested ? id : null;
    showDetail(body.order);
  });

  orderAction('detail-retry', 'retry', (_response, body, id) => {
    say('Retried: the order is PENDING again; its failure is kept below.');
    showDetail(body.order);
    // The stream ended at FAILED: follow the order's new run.
    follow(id);
  });

  // ---- Bulk actions on the filtered orders ----------------------------------------------

  // The most orders one bulk action from the page acts on, the oldest first.
  const BULK_LIMIT = 100000;
  const BULK = {
    retry: { status: 'FAILED', verb: 'Retry', done: 'retried', path: '/orders/bulk/retry' },
    cancel: { status: 'PENDING', verb: 'Cancel', done: 'cancelled', path: '/orders/bulk/cancel' },
  };
  // The request the open dialog would send, and whether one is in flight.
  let bulkAsked = null;

  function bulkButtons() {
    const status = $('filter-status').value;
    $('bulk-retry').hidden = !(status === '' || status === 'FAILED');
    $('bulk-cancel').hidden = !(status === '' || status === 'PENDING');
  }

  function bulkBody(extra = {}) {
    const body = { limit: BULK_LIMIT, ...extra };
    const user = $('filter-user').value.trim();
    if (user) body.userId = user;
    return body;
  }

  async function openBulk(kind) {
    const what = BULK[kind];
    const dialog = $('bulk');
    const user = $('filter-user').value.trim();
    const whose = user ? ` of user ${user}` : '';
    setText($('bulk-h'), `${what.verb} all ${what.status.toLowerCase()} orders${whose}`);
    setText($('bulk-text'), 'Counting…');
    setText($('bulk-progress'), '');
    $('bulk-progress').className = 'message';
    const confirm = $('bulk-confirm');
    confirm.hidden = true;
    confirm.disabled = false;
    bulkAsked = null;
    if (!dialog.open) dialog.showModal();
    try {
      const body = bulkBody({ dryRun: true });
      const { matched } = await apiJson(what.path, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
      });
      if (matched === 0) {
        setText($('bulk-text'), `No ${what.status.toLowerCase()} orders${whose} match.`);
        return;
      }
      const oldest = matched >= BULK_LIMIT ? ` (the oldest ${BULK_LIMIT.toLocaleString()})` : '';
      setText($('bulk-text'), `${what.verb} ${plural(matched, `${what.status.toLowerCase()} order`).replace(/^\d+/, matched.toLocaleString())}${whose}${oldest}? Orders that change before their turn are left alone.`);
      setText(confirm, `${what.verb} ${matched.toLocaleString()}`);
      confirm.hidden = false;
      // One key per confirmation: a resend of this request answers the same action.
      bulkAsked = { what, body: bulkBody(), key: `dashboard-${Date.now()}-${Math.random().toString(36).slice(2)}` };
    } catch (error) {
      setText($('bulk-text'), error.message);
    }
  }

  async function runBulk() {
    const asked = bulkAsked;
    if (!asked) return;
    const confirm = $('bulk-confirm');
    confirm.disabled = true;
    const progress = $('bulk-progress');
    try {
      const response = await api(asked.what.path, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': asked.key },
        body: JSON.stringify(asked.body),
      });
      if (!response.ok) throw await errorOf(response);
      let { action } = await response.json();
      confirm.hidden = true;
      $('bulk-close').focus();
      const say = () => setText(progress, action.status === 'DONE'
        ? `Done: ${action.acted.toLocaleString()} ${asked.what.done}, ${action.skipped.toLocaleString()} left alone (they had changed).`
        : `${asked.what.verb}: ${(action.acted + action.skipped).toLocaleString()} of ${action.matched.toLocaleString()} gone through…`);
      say();
      const location = response.headers.get('location') || `/orders/bulk/${action.id}`;
      while (action.status !== 'DONE' && $('bulk').open && bulkAsked === asked) {
        await sleep(500);
        action = (await apiJson(location.replace(/^.*\/orders\/bulk\//, '/orders/bulk/'))).action;
        say();
      }
      refreshTable();
    } catch (error) {
      progress.className = 'message error';
      setText(progress, error.message);
      confirm.disabled = false;
    }
  }

  $('bulk-retry').addEventListener('click', () => openBulk('retry'));
  $('bulk-cancel').addEventListener('click', () => openBulk('cancel'));
  $('bulk-confirm').addEventListener('click', runBulk);
  $('bulk-close').addEventListener('click', () => $('bulk').close());
  $('bulk').addEventListener('close', () => { bulkAsked = null; });
  $('filter-status').addEventListener('change', bulkButtons);
  bulkButtons();

  followMetrics();
  refreshTable();
})();
