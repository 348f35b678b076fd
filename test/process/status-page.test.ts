/**
 * The den status page in a real browser: Debian's Chromium driven headless by
 * playwright-core, three real `agentd run` processes in one den on a real
 * redis-server with a password. The page must list the den, show a kill -9
 * without a reload, stay readable on a phone, and never show the Redis
 * password or an event payload.
 *
 * AGENTD_UPDATE_SCREENSHOT=1 rewrites docs/status-page.png from this run.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processSuite, type Agent, type AgentOptions } from '../helpers/process.ts';
import { keys, seedMessage, waitFor } from '../helpers/util.ts';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const PASSWORD = 'pw-Status-7f3a9c1e';
const MARKER = 'PAYLOAD-MARKER-5b1e0d';
const DEN = 'ops';
const TTL = 2;
const INTERVAL = 0.5;
const SWEEP = 0.5;
const PLUGINS = ['log-events.js', 'task-runner.js'].map((p) => fileURLToPath(new URL(`../../examples/plugins/${p}`, import.meta.url)));
const SCREENSHOT = fileURLToPath(new URL('../../docs/status-page.png', import.meta.url));

const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) process.stderr.write(`[status-page] skipped: ${CHROMIUM} is missing (bash .ci/run installs Debian's chromium)\n`);

const suite = processSuite({
  redis: { requireControl: true, password: PASSWORD, args: ['--maxmemory', '64mb'] },
  env: {
    AGENTD_HEARTBEAT_TTL: String(TTL),
    AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
    AGENTD_SWEEP_INTERVAL: String(SWEEP),
    AGENTD_MEMORY_CHECK_INTERVAL: '1',
  },
});

describe.skipIf(!hasChromium)('den status page in Chromium', () => {
  const agents = new Map<string, Agent>();
  let pub: Redis;
  let statusPort = 0;
  let plainPort = 0;
  let context: BrowserContext;
  let page: Page;
  let userDataDir: string;
  const navigations: string[] = [];
  const pageErrors: string[] = [];

  const base = (): string => `http://127.0.0.1:${statusPort}`;

  beforeAll(async () => {
    expect(suite.redis.url, 'the daemons log in with the password').toContain(PASSWORD);
    const agent = (id: string, more: AgentOptions = {}): AgentOptions => ({ ...more, id, den: DEN, plugins: PLUGINS });
    // alpha (the one serving the page) first, so it sees the others come online.
    const alpha = await suite.start(agent('alpha', { http: true, env: { AGENTD_HTTP_STATUS_PAGE: 'true' } }));
    statusPort = alpha.httpPort;
    agents.set('alpha', alpha);
    const bravo = await suite.spawn(agent('bravo', { http: true }));
    const charlie = await suite.spawn(agent('charlie'));
    await Promise.all([bravo.ready(), charlie.ready()]);
    plainPort = bravo.httpPort;
    agents.set('bravo', bravo);
    agents.set('charlie', charlie);

    // Some traffic for the handler table: a task for alpha, and an event carrying the payload marker.
    pub = suite.cmd;
    await pub.publish(keys.channel('task_request'), seedMessage('task_request', { task_id: 'status-1', agent: 'alpha' }));
    await pub.publish(keys.channel('new_message'), seedMessage('new_message', { user_id: 'u1', text: MARKER }));

    userDataDir = mkdtempSync(join(suite.tmp, 'chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1100, height: 900 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations.push(f.url());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
  });

  afterAll(async () => {
    await context?.close();
  });

  it('lists the three agents of the den with heartbeat bars, host, version and uptime', async () => {
    await page.goto(`${base()}/status`);
    const online = page.locator('#members tr[data-status="online"]');
    await waitFor('three agents online on the page', async () => (await online.count()) === 3, 10_000);
    expect(await online.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-agent')).sort())).toEqual(['alpha', 'bravo', 'charlie']);
    const charlie = page.locator('#members tr[data-agent="charlie"]');
    const meter = charlie.locator('meter');
    expect(Number(await meter.getAttribute('max'))).toBeCloseTo(TTL, 0);
    expect(Number(await meter.getAttribute('value'))).toBeLessThanOrEqual(TTL);
    expect(await meter.getAttribute('aria-label')).toContain('charlie');
    const cells = await charlie.locator('td').allTextContents();
    expect(cells.join(' ')).toContain('0.1.0');
    // Accessible structure: a captioned table with column headers and a row header per agent.
    await expect(page.getByRole('table', { name: /Agents of this den/ }).count()).resolves.toBe(1);
    expect(await page.locator('#members-table thead th[scope="col"]').count()).toBe(7);
    expect(await page.locator('#members th[scope="row"]').count()).toBe(3);
    expect(await page.locator('[aria-live="polite"]').count()).toBe(1);
    expect(await page.locator('#den').textContent()).toBe(DEN);
    // The handler table has both example plugins, the durable slot is marked.
    await waitFor('task-runner ok', async () => Number(await page.locator('#handlers tr[data-plugin="task-runner"] td').first().textContent()) >= 1, 10_000);
    expect(await page.locator('[data-slot="durable"]').count()).toBe(1);
    expect(pageErrors).toEqual([]);
  });

  it('shows charlie going down after kill -9, without a reload', async () => {
    const loadsBefore = navigations.length;
    const victim = agents.get('charlie')!;
    victim.signal('SIGKILL');
    await victim.exited;
    // Detected within TTL + sweep; the page polls every second.
    const bound = (TTL + SWEEP) * 1000 + 10_000;
    await page.locator('#members tr[data-agent="charlie"][data-status="down"]').waitFor({ timeout: bound });
    await page.locator('#events tr[data-event="agent_down"][data-agent="charlie"]').waitFor({ timeout: 5_000 });
    const details = await page.locator('#events tr[data-event="agent_down"][data-agent="charlie"]').textContent();
    expect(details).toMatch(/reported by (alpha|bravo) via (sweep|expiry)/);
    expect(await page.locator('#members tr[data-status="online"]').count()).toBe(2);
    expect(navigations.length).toBe(loadsBefore);
    expect(await page.locator('#live').textContent()).toMatch(/charlie is now (expired|down)/);

    await page.waitForTimeout(1_500); // a settled page for the picture
    const shot = process.env['AGENTD_UPDATE_SCREENSHOT'] === '1' ? SCREENSHOT : join(userDataDir, 'status-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = readFileSync(shot);
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(png.length).toBeGreaterThan(20_000);
  });

  it('exposes no secret and no event payload, and renders hostile names as text', async () => {
    // Hostile membership events: markup as a host name, an id that is no id.
    await pub.publish(keys.channel('agent_online'), seedMessage('agent_online', { agent: 'mallory', den: DEN, host: `<img src=x onerror=alert(1)>${MARKER}` }));
    await pub.publish(keys.channel('agent_online'), seedMessage('agent_online', { agent: `<b>${MARKER}</b>`, den: DEN, host: 'h' }));
    await page.locator('#events tr[data-agent="mallory"]').waitFor({ timeout: 5_000 });
    const html = await page.content();
    const served = await (await fetch(`${base()}/status`)).text();
    const json = await (await fetch(`${base()}/status.json`)).text();
    for (const text of [html, served, json]) {
      expect(text).not.toContain(PASSWORD);
      expect(text).not.toContain(MARKER);
    }
    // mallory's event is kept without its markup host; the non-id is dropped.
    const events = (JSON.parse(json) as { events: Array<{ agent: string; host?: string }> }).events;
    expect(events.find((e) => e.agent === 'mallory')).toEqual(expect.not.objectContaining({ host: expect.anything() }));
    expect(await page.locator('img').count()).toBe(0);
    const res = await fetch(`${base()}/status`);
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'none'.*script-src 'sha256-/);
    expect(pageErrors).toEqual([]);
  });

  it('is readable on a phone: no sideways scrolling of the page itself', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1_200);
    const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(overflow).toBeLessThanOrEqual(0);
    expect(await page.locator('#members tr[data-agent="alpha"]').isVisible()).toBe(true);
    await page.setViewportSize({ width: 1100, height: 900 });
  });

  it('says so when Redis cannot be read, and still shows this agent\'s own data (runs last: it stops Redis)', async () => {
    await suite.redis.kill('SIGKILL');
    const error = page.locator('#members-error');
    await waitFor('the page reports Redis unreadable', async () => /could not read the den from Redis/.test((await error.textContent()) ?? ''), 10_000);
    expect(await page.locator('#queue tr[data-key="waiting"]').count()).toBe(1);
    // The state comes from the daemon's own readiness, which may turn a poll after the members error.
    await waitFor('the page shows the daemon degraded', async () => /degraded|starting/.test((await page.locator('#state').textContent()) ?? ''), 10_000);
    const json = await (await fetch(`${base()}/status.json`)).text();
    expect(json).not.toContain(PASSWORD);
    expect((JSON.parse(json) as { membersError: string }).membersError).toMatch(/could not read the den from Redis/);
    expect(pageErrors).toEqual([]);
  });

  it('is off unless http.statusPage is set', async () => {
    const res = await fetch(`http://127.0.0.1:${plainPort}/status`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { paths: string[] }).paths).not.toContain('/status');
    expect((await fetch(`http://127.0.0.1:${plainPort}/status.json`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${plainPort}/metrics`)).status).toBe(200);
  });
});
