// Example plugin: logs one line for every event the daemon receives.
// Run it with:  AGENTD_PLUGINS=./examples/plugins/log-events.js node dist/bin/agentd.js run

const MAX_SUMMARY = 120;

/**
 * A one-line description of an event's data that stays short whatever was sent:
 * the key names of an object, the length of an array, the start of a string.
 * @param {unknown} data
 * @returns {string}
 */
function summarize(data) {
  if (data === null) return 'null';
  if (Array.isArray(data)) return `array(${data.length})`;
  if (typeof data === 'object') {
    const keys = Object.keys(data);
    const text = `{${keys.join(', ')}}`;
    return text.length <= MAX_SUMMARY ? text : `{${keys.length} keys}`;
  }
  const text = typeof data === 'string' ? JSON.stringify(data) : String(data);
  return text.length <= MAX_SUMMARY ? text : `${text.slice(0, MAX_SUMMARY - 1)}…`;
}

/** @type {import('agentd').Plugin} */
export default {
  name: 'log-events',
  handlers: {
    '*'(event, ctx) {
      ctx.log.info({ event: event.event, source: event.source ?? null, data: summarize(event.data) }, 'event received');
    },
  },
};
