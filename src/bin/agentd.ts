#!/usr/bin/env node
/*
 * The agentd command (package.json "bin"). It only checks the Node.js version
 * and then loads the real entry (main.ts): this file is evaluated before any
 * other module is even parsed, so it is written in syntax and APIs that old
 * Node.js releases parse and run (no types, no imports, no newer syntax),
 * and a too-old node prints one clear line instead of a stack trace.
 */
// Keep in step with "engines" in package.json.
var parts = process.versions.node.split('.');
var major = Number(parts[0]);
var minor = Number(parts[1]);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write('agentd: needs Node.js >= 22.12 (this is ' + process.version + ' at ' + process.execPath + ') [AGENTD_ERR_USAGE]\n');
  process.exit(2);
}
// Node's code cache for agentd's modules and its dependencies' (NODE_COMPILE_CACHE names the folder,
// by default one in the OS temp folder; NODE_DISABLE_COMPILE_CACHE=1 turns it off): a restart compiles
// less and is ready sooner. Best effort: a folder that cannot be written only costs the cache.
// Node's own recursive mkdir of the default folder spins forever where mkdir answers ENOENT under a
// folder that exists (TMPDIR=/proc): the folder is made here first, and the cache left off if that fails.
try {
  var nodeModule = process.getBuiltinModule('node:module');
  var usable = true;
  if (!process.env.NODE_COMPILE_CACHE) {
    try {
      process.getBuiltinModule('node:fs').mkdirSync(process.getBuiltinModule('node:path').join(process.getBuiltinModule('node:os').tmpdir(), 'node-compile-cache'));
    } catch (err) {
      usable = Object(err).code === 'EEXIST';
    }
  }
  if (usable && nodeModule && typeof nodeModule.enableCompileCache === 'function') nodeModule.enableCompileCache();
} catch (err) {
  // No cache, then.
}
import('./main.ts').catch(function (err) {
  process.stderr.write('agentd: cannot load: ' + (err && err.message ? err.message : String(err)) + '\n');
  process.exit(1);
});
