// Example plugin: runs a pretend task for every `task_request` event and
// records its progress with ctx.memory under agent:<id>:task:<task_id>:status
// (the article's task-status key, 24 h TTL).
//
//   agentd publish task_request '{"task_id":"t1"}'
//   redis-cli GET agent:<id>:task:t1:status        # running → done
//
// Options (config file): {"workMs": 500}, how long the pretend work takes.
// Every agent running this plugin receives every request; send
// {"task_id": "t1", "agent": "<id>"} to address a single agent.
import { setTimeout as sleep } from 'node:timers/promises';

const DEFAULT_WORK_MS = 500;
// Same rule as agent ids: a ':' or '*' in a key part would break key scanning.
const TASK_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * @param {unknown} value
 * @returns {number}
 */
function workMs(value) {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : DEFAULT_WORK_MS;
}

/** @type {import('agentd').Plugin} */
export default {
  name: 'task-runner',

  setup(ctx) {
    ctx.log.info({ workMs: workMs(ctx.options.workMs) }, 'task runner ready');
  },

  handlers: {
    async task_request(event, ctx) {
      const data = /** @type {Record<string, unknown> | null} */ (
        event.data !== null && typeof event.data === 'object' && !Array.isArray(event.data) ? event.data : null
      );
      const taskId = data?.['task_id'];
      if (typeof taskId !== 'string' || !TASK_ID.test(taskId)) {
        ctx.log.warn({ source: event.source ?? null }, 'task_request ignored: data.task_id must be 1-128 characters of A-Z a-z 0-9 . _ -');
        return;
      }
      if (data?.['agent'] !== undefined && data['agent'] !== ctx.agent.id) {
        ctx.log.debug({ task_id: taskId, for: data['agent'] }, 'task_request for another agent');
        return;
      }

      await ctx.memory.setTaskStatus(taskId, 'running');
      ctx.log.info({ task_id: taskId }, 'task started');

      try {
        // The signal aborts when the handler's time limit passes or the daemon shuts down.
        await sleep(workMs(ctx.options.workMs), undefined, { signal: ctx.signal });
      } catch (err) {
        if (!ctx.signal.aborted) throw err;
        // Best effort: at shutdown the connection may already be closing.
        await ctx.memory.setTaskStatus(taskId, 'aborted').catch(() => undefined);
        ctx.log.warn({ task_id: taskId, reason: String(ctx.signal.reason) }, 'task aborted');
        return;
      }

      await ctx.memory.setTaskStatus(taskId, 'done');
      await ctx.publish('task_complete', { task_id: taskId, agent: ctx.agent.id });
      ctx.log.info({ task_id: taskId }, 'task done');
    },
  },
};
