import { createHash } from 'node:crypto';

/**
 * The den status page: one HTML document with its CSS and script inline, no
 * external asset, so it works on a machine with no network and needs no
 * build step. The script polls status.json once a second and builds the
 * tables with textContent only (every value from Redis is untrusted).
 * The Content-Security-Policy allows exactly this script and this style.
 */

const STYLE = String.raw`
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #ffffff; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --off: #59636e; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d; --panel: #151b23;
  --ok: #3fb950; --warn: #d29922; --bad: #f85149; --off: #9198a1; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header, main { max-width: 76rem; margin: 0 auto; padding: 0.75rem 1rem; }
header { border-bottom: 1px solid var(--line); }
h1 { font-size: 1.4rem; margin: 0.2rem 0; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 0.4rem; }
h3 { font-size: 1rem; margin: 1rem 0 0.3rem; }
p { margin: 0.3rem 0; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding: 0.4rem 0.6rem; color: var(--muted); caption-side: top; }
th, td { text-align: left; padding: 0.35rem 0.6rem; border-top: 1px solid var(--line); white-space: nowrap; vertical-align: middle; }
thead th { background: var(--panel); border-top: 0; font-weight: 600; }
td.num, th.num { text-align: right; }
.badge { display: inline-block; padding: 0 0.5rem; border-radius: 1rem; font-weight: 600; font-size: 0.85rem; border: 1px solid currentColor; }
.s-online, .s-ready { color: var(--ok); }
.s-expired, .s-degraded, .s-starting { color: var(--warn); }
.s-down, .s-closing, .s-closed, .s-error { color: var(--bad); }
.s-offline, .s-unknown, .s-idle { color: var(--off); }
meter { width: 7rem; height: 0.9rem; vertical-align: middle; margin-right: 0.4rem; }
.grid { display: grid; gap: 0 1.5rem; grid-template-columns: repeat(auto-fit, minmax(19rem, 1fr)); }
.slot { border: 1px dashed var(--line); border-radius: 6px; padding: 0.6rem 0.8rem; background: var(--panel); }
.alert { color: var(--bad); font-weight: 600; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 40rem) { .wide { display: none; } body { font-size: 14px; } th, td { padding: 0.3rem 0.4rem; } meter { width: 4.5rem; } }
`;

const SCRIPT = String.raw`
(function () {
  'use strict';
  var POLL_MS = 1000;
  var last = null;
  var known = {};
  var failing = false;
  function byId(id) { return document.getElementById(id); }
  function el(tag, props, children) {
    var e = document.createElement(tag);
    if (props) for (var k in props) {
      if (k === 'text') e.textContent = props[k];
      else if (k === 'cls') e.className = props[k];
      else e.setAttribute(k, props[k]);
    }
    (children || []).forEach(function (c) { if (c !== null && c !== undefined) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function td(text, cls) { return el('td', { text: text, cls: cls || '' }); }
  function dur(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    if (ms < 1000) return (ms < 10 && ms % 1 ? ms.toFixed(1) : Math.round(ms)) + ' ms';
    var s = ms / 1000;
    if (s < 10) return s.toFixed(1) + ' s';
    if (s < 60) return Math.round(s) + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + Math.round(s % 60) + ' s';
    var h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }
  function bytes(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }
  function clock(ms) {
    if (!ms) return '—';
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }
  function badge(status) { return el('span', { cls: 'badge s-' + status, text: status }); }
  function meter(value, max, low, high, label) {
    return el('meter', { min: '0', max: String(max), value: String(Math.min(value, max)), low: String(low), high: String(high), optimum: '0', 'aria-label': label });
  }
  function announce(text) {
    var live = byId('live');
    live.textContent = text;
  }

  function memberRow(m, s) {
    var now = s.generatedAt;
    var ttlS = m.heartbeatTtlMs / 1000;
    var beat;
    if (m.heartbeatAgeMs === null) beat = el('td', { text: m.status === 'online' ? '—' : 'no heartbeat' });
    else {
      var ageS = m.heartbeatAgeMs / 1000;
      beat = el('td', {}, [meter(ageS, ttlS, ttlS * 0.5, ttlS * 0.75, 'heartbeat age of ' + m.id + ' against its TTL'), dur(m.heartbeatAgeMs) + ' / ' + dur(m.heartbeatTtlMs)]);
    }
    var seen;
    if (m.status === 'down' && m.downAt) seen = 'down at ' + clock(m.downAt) + ' (' + dur(now - m.downAt) + ' ago)';
    else if (m.lastSeen) seen = clock(m.lastSeen) + ' (' + dur(Math.max(0, now - m.lastSeen)) + ' ago)';
    else seen = '—';
    var tr = el('tr', { 'data-agent': m.id, 'data-status': m.status }, [
      el('th', { scope: 'row' }, [m.id, m.id === s.agent.id ? el('span', { cls: 'muted wide', text: ' (this agent)' }) : null]),
      el('td', {}, [badge(m.status)]),
      beat,
      td(m.host || '—', 'wide'),
      td(m.version || '—', 'wide'),
      td(m.status === 'online' && m.startedAt ? dur(now - m.startedAt) : '—'),
      td(seen, 'wide'),
    ]);
    return tr;
  }

  function eventRow(e, s) {
    var details = [];
    if (e.host) details.push('host ' + e.host);
    if (e.rejoined) details.push('rejoined');
    if (e.reason) details.push(e.reason);
    if (e.detectedBy) details.push('reported by ' + e.detectedBy + (e.via ? ' via ' + e.via : ''));
    return el('tr', { 'data-event': e.type, 'data-agent': e.agent }, [
      el('td', {}, [clock(e.at), el('span', { cls: 'muted wide', text: ' (' + dur(Math.max(0, s.generatedAt - e.at)) + ' ago)' })]),
      el('td', {}, [badge(e.type === 'agent_online' ? 'online' : e.type === 'agent_down' ? 'down' : 'offline'), ' ' + e.type]),
      el('th', { scope: 'row', text: e.agent }),
      td(details.join(', ') || '—', 'wide'),
    ]);
  }

  function kv(tbody, rows) {
    tbody.replaceChildren.apply(tbody, rows.map(function (r) {
      return el('tr', { 'data-key': r[0] }, [el('th', { scope: 'row', text: r[0] }), el('td', { cls: 'num', text: String(r[1]) })]);
    }));
  }

  function render(s) {
    last = s;
    document.title = 'den ' + s.agent.den + ' — agentd status';
    byId('den').textContent = s.agent.den;
    byId('self').textContent = s.agent.id;
    byId('version').textContent = s.agent.version;
    var state = byId('state');
    state.replaceChildren(badge(s.state));
    byId('reasons').textContent = s.reasons.length ? s.reasons.join('; ') : '';
    byId('updated').textContent = 'updated ' + clock(s.generatedAt);
    byId('conn').textContent = '';

    var members = byId('members');
    members.replaceChildren.apply(members, s.members.map(function (m) { return memberRow(m, s); }));
    var online = s.members.filter(function (m) { return m.status === 'online'; }).length;
    byId('members-summary').textContent = online + ' online of ' + s.members.length + ' listed' +
      (s.membersLeftOut ? ', ' + s.membersLeftOut + ' more not shown' : '') + '; heartbeat TTL ' + s.heartbeat.ttlSeconds + ' s, beat every ' + s.heartbeat.intervalSeconds + ' s';
    byId('members-error').textContent = s.membersError || '';
    if (s.members.length === 0) members.appendChild(el('tr', {}, [el('td', { colspan: '7', text: s.membersError ? 'unavailable' : 'no members' })]));
    s.members.forEach(function (m) {
      var before = known[m.id];
      if (before && before !== m.status) announce(m.id + ' is now ' + m.status);
      known[m.id] = m.status;
    });

    var events = byId('events');
    events.replaceChildren.apply(events, s.events.map(function (e) { return eventRow(e, s); }));
    if (s.events.length === 0) events.appendChild(el('tr', {}, [el('td', { colspan: '4', text: 'none since this daemon started' })]));

    var q = s.queue;
    kv(byId('queue'), [
      ['waiting', q.waiting + ' of ' + q.max],
      ['running', q.running + ' of ' + q.concurrency],
      ['events received', s.traffic.received],
      ['events dispatched', s.traffic.dispatched],
      ['events no plugin handles', s.traffic.unhandled],
    ]);
    var drops = [];
    Object.keys(q.dropped).forEach(function (k) { drops.push([k + ' (handler call)', q.dropped[k]]); });
    Object.keys(q.invalid).forEach(function (k) { drops.push([k + ' (bad input)', q.invalid[k]]); });
    kv(byId('dropped'), drops);

    var handlers = byId('handlers');
    handlers.replaceChildren.apply(handlers, s.handlers.map(function (h) {
      return el('tr', { 'data-plugin': h.plugin }, [
        el('th', { scope: 'row', text: h.plugin }),
        td(String(h.ok), 'num'), td(String(h.error), 'num' + (h.error ? ' alert' : '')), td(String(h.timeout), 'num' + (h.timeout ? ' alert' : '')),
        td(String(h.aborted), 'num wide'),
        td(h.p50Le === null ? '—' : '≤ ' + dur(h.p50Le * 1000), 'num'), td(h.p99Le === null ? '—' : '≤ ' + dur(h.p99Le * 1000), 'num'),
      ]);
    }));
    if (s.handlers.length === 0) handlers.appendChild(el('tr', {}, [el('td', { colspan: '7', text: 'no handler calls yet' })]));

    var loop = byId('loop');
    var budget = s.loop.budgetMs;
    loop.replaceChildren(meter(s.loop.lastMaxMs, budget, budget / 4, budget / 2, 'event-loop delay against the heartbeat budget'),
      dur(s.loop.lastMaxMs) + ' in the last heartbeat interval; worst ' + dur(s.loop.worstMs) + '; budget ' + dur(budget) + ' (heartbeat TTL − interval)');
    var mem = byId('memory');
    if (!s.redisMemory) mem.textContent = 'not checked yet (or memory.checkInterval is 0)';
    else if (!s.redisMemory.maxBytes) mem.textContent = bytes(s.redisMemory.usedBytes) + ' used; no maxmemory limit';
    else {
      var r = s.redisMemory;
      mem.replaceChildren(meter(r.usedBytes, r.maxBytes, r.maxBytes * r.warnRatio * 0.8, r.maxBytes * r.warnRatio, 'Redis memory used against maxmemory'),
        bytes(r.usedBytes) + ' of ' + bytes(r.maxBytes) + ' (' + Math.round(100 * r.usedBytes / r.maxBytes) + ' %; warns above ' + Math.round(100 * r.warnRatio) + ' %)');
    }
    var durable = byId('durable-body');
    if (s.durable) {
      var d = s.durable;
      var rows = [];
      if (d.inbox) rows.push(['inbox length', d.inbox.length], ['inbox pending', d.inbox.pending]);
      if (d.denTasks) rows.push(['den tasks length', d.denTasks.length], ['den tasks pending', d.denTasks.pending]);
      if (d.deadLetters) rows.push(['dead letters (inbox)', d.deadLetters.inbox], ['dead letters (den tasks)', d.deadLetters.denTasks]);
      var tb = el('tbody');
      kv(tb, rows);
      durable.replaceChildren(el('table', {}, [el('caption', { text: 'Durable messages' }), tb]));
    }
  }

  function fail(err) {
    byId('conn').textContent = 'connection to the daemon lost (' + (err && err.message ? err.message : 'error') + '); retrying' + (last ? '; showing data from ' + clock(last.generatedAt) : '');
    if (!failing) announce('connection to the daemon lost');
    failing = true;
  }

  function poll() {
    fetch('status.json', { cache: 'no-store', headers: { accept: 'application/json' } })
      .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then(function (s) { if (failing) announce('connection to the daemon restored'); failing = false; render(s); }, fail)
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
`;

const BODY = String.raw`
<header>
  <h1>Den <span id="den">…</span></h1>
  <p>Seen from agent <strong id="self">…</strong> (agentd <span id="version">…</span>), state <span id="state">…</span> <span id="reasons" class="muted"></span></p>
  <p class="muted"><span id="updated">loading…</span> · refreshes every second · <a href="status.json">status.json</a> · <a href="metrics">metrics</a></p>
  <p id="conn" class="alert"></p>
  <div id="live" class="visually-hidden" aria-live="polite" role="status"></div>
</header>
<main>
  <noscript><p class="alert">This page needs JavaScript to load its data; the same data is at <a href="status.json">status.json</a>.</p></noscript>
  <section aria-labelledby="h-members">
    <h2 id="h-members">Members</h2>
    <p id="members-summary" class="muted"></p>
    <p id="members-error" class="alert"></p>
    <div class="scroll" role="region" aria-labelledby="h-members" tabindex="0">
      <table id="members-table">
        <caption>Agents of this den: status, heartbeat age against the heartbeat TTL, host, version, uptime</caption>
        <thead><tr><th scope="col">Agent</th><th scope="col">Status</th><th scope="col">Heartbeat age / TTL</th><th scope="col" class="wide">Host</th><th scope="col" class="wide">Version</th><th scope="col">Uptime</th><th scope="col" class="wide">Last seen</th></tr></thead>
        <tbody id="members"></tbody>
      </table>
    </div>
  </section>
  <section aria-labelledby="h-events">
    <h2 id="h-events">Recent membership events</h2>
    <div class="scroll" role="region" aria-labelledby="h-events" tabindex="0">
      <table id="events-table">
        <caption>agent_online, agent_offline and agent_down, newest first, as this agent received them</caption>
        <thead><tr><th scope="col">Time</th><th scope="col">Event</th><th scope="col">Agent</th><th scope="col" class="wide">Details</th></tr></thead>
        <tbody id="events"></tbody>
      </table>
    </div>
  </section>
  <section aria-labelledby="h-self">
    <h2 id="h-self">This agent</h2>
    <div class="grid">
      <div>
        <h3 id="h-queue">Queue</h3>
        <div class="scroll"><table aria-labelledby="h-queue"><tbody id="queue"></tbody></table></div>
      </div>
      <div>
        <h3 id="h-dropped">Dropped, by reason</h3>
        <div class="scroll"><table aria-labelledby="h-dropped"><tbody id="dropped"></tbody></table></div>
      </div>
    </div>
    <h3 id="h-handlers">Handler calls per plugin</h3>
    <div class="scroll" role="region" aria-labelledby="h-handlers" tabindex="0">
      <table>
        <caption>Finished handler calls by outcome; latency as the upper bound of the histogram bucket holding the median and the 99th percentile</caption>
        <thead><tr><th scope="col">Plugin</th><th scope="col" class="num">ok</th><th scope="col" class="num">error</th><th scope="col" class="num">timeout</th><th scope="col" class="num wide">aborted</th><th scope="col" class="num">p50</th><th scope="col" class="num">p99</th></tr></thead>
        <tbody id="handlers"></tbody>
      </table>
    </div>
    <h3 id="h-loop">Event-loop delay</h3>
    <p id="loop" aria-labelledby="h-loop"></p>
    <h3 id="h-memory">Redis memory</h3>
    <p id="memory" aria-labelledby="h-memory"></p>
  </section>
  <section aria-labelledby="h-durable" id="durable" data-slot="durable">
    <h2 id="h-durable">Durable inbox, den tasks and dead letters</h2>
    <div id="durable-body" class="slot">Not reported: durable messages are off on this daemon (durable.enabled=false), or Redis did not answer.</div>
  </section>
</main>
`;

function sha256(text: string): string {
  return `'sha256-${createHash('sha256').update(text).digest('base64')}'`;
}

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>agentd den status</title>
<style>${STYLE}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`;

/** Allows this page's own inline script and style and requests to the same origin, nothing else. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
